package edge

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
)

// Record is one measurepoint post: the points and their time in ms.
type Record struct {
	Measurepoints map[string]any `json:"measurepoints"`
	Time          int64          `json:"time"`
}

// Buffer keeps measurepoint records on disk while the agent is offline: an
// append-only file of JSON lines, mode 0600, bounded to MaxBytes. When a new
// record would pass the bound, the oldest half is dropped (the file is
// rewritten once, atomically) so the newest data survive a long outage.
type Buffer struct {
	Path     string
	MaxBytes int64

	mu      sync.Mutex
	dropped int
}

// DefaultBufferBytes bounds the buffer when MaxBytes is not set.
const DefaultBufferBytes = 4 << 20

func (b *Buffer) max() int64 {
	if b.MaxBytes > 0 {
		return b.MaxBytes
	}
	return DefaultBufferBytes
}

// Append adds r to the end of the buffer.
func (b *Buffer) Append(r Record) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("edge: buffer record: %w", err)
	}
	line = append(line, '\n')
	if int64(len(line)) > b.max() {
		return fmt.Errorf("edge: record of %d bytes exceeds the buffer bound", len(line))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if fi, err := os.Stat(b.Path); err == nil && fi.Size()+int64(len(line)) > b.max() {
		if err := b.compact(int64(len(line))); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(b.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// compact drops the oldest records until the file has room for need bytes
// and is at most half full.
func (b *Buffer) compact(need int64) error {
	data, err := os.ReadFile(b.Path)
	if err != nil {
		return err
	}
	keep := b.max()/2 - need
	for int64(len(data)) > keep && len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			data = nil
			break
		}
		data = data[i+1:]
		b.dropped++
	}
	return writeFileAtomic(b.Path, data)
}

// Dropped reports how many records the bound has discarded.
func (b *Buffer) Dropped() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

// Len reports how many records are waiting.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	recs, _ := b.read()
	return len(recs)
}

func (b *Buffer) read() ([]Record, error) {
	f, err := os.Open(b.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var recs []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), int(b.max()))
	for sc.Scan() {
		var r Record
		// A torn last line (power cut during a write) is skipped.
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Measurepoints != nil {
			recs = append(recs, r)
		}
	}
	return recs, sc.Err()
}

// Drain hands the records, oldest first, to send until it fails. Sent
// records are removed; the rest stay for the next Drain. It returns how
// many were sent.
func (b *Buffer) Drain(send func(Record) error) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	recs, err := b.read()
	if err != nil || len(recs) == 0 {
		return 0, err
	}
	n := 0
	var sendErr error
	for _, r := range recs {
		if sendErr = send(r); sendErr != nil {
			break
		}
		n++
	}
	if n == len(recs) {
		return n, shred(b.Path)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range recs[n:] {
		if err := enc.Encode(r); err != nil {
			return n, err
		}
	}
	if err := writeFileAtomic(b.Path, buf.Bytes()); err != nil {
		return n, err
	}
	return n, sendErr
}
