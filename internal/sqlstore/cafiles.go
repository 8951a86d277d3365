package sqlstore

import (
	"context"
	"database/sql"
)

// caFileAAD binds a sealed CA file to its name.
func caFileAAD(name string) string { return "ca_file:" + name }

// CAFiles returns every shared CA file by name, unsealed.
func (c *Core) CAFiles(ctx context.Context) (map[string][]byte, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT name, content FROM ca_files`))
	if err != nil {
		return nil, c.wrap("ca files", err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var name, sealed string
		if err := rows.Scan(&name, &sealed); err != nil {
			return nil, c.wrap("ca files", err)
		}
		plain, err := c.cfg.Sealer.Open(sealed, caFileAAD(name))
		if err != nil {
			return nil, c.wrap("open ca file "+name, err)
		}
		out[name] = []byte(plain)
	}
	return out, c.wrap("ca files", rows.Err())
}

// PutCAFiles writes files (name → content), sealed, in one transaction.
func (c *Core) PutCAFiles(ctx context.Context, files map[string][]byte) error {
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		for name, content := range files {
			if name == "" {
				return Invalid("a CA file needs a name")
			}
			sealed, err := c.cfg.Sealer.Seal(string(content), caFileAAD(name))
			if err != nil {
				return c.wrap("seal ca file", err)
			}
			if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO ca_files (name, content, updated_at) VALUES (?,?,?)
				ON CONFLICT (name) DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at`), name, sealed, now); err != nil {
				return c.wrap("put ca file", err)
			}
		}
		return nil
	})
}
