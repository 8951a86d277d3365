package client

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// StreamEvent is one event of GET /api/v1/stream.
type StreamEvent struct {
	ID   int64
	Kind string
	Data []byte
}

// Stream follows GET /api/v1/stream with query (productKey, deviceKey,
// kinds) after cursor after ("" for what comes next) and calls fn with
// each event until ctx ends, fn fails or the hub refuses (a *StatusError:
// an expired cursor is 410). A dropped connection is resumed from the last
// event's id, so fn misses nothing.
func (c *Client) Stream(ctx context.Context, query url.Values, after string, fn func(StreamEvent) error) error {
	hc := *c.HTTP
	hc.Timeout = 0 // a stream lasts
	for {
		last, err := c.streamOnce(ctx, &hc, query, after, fn)
		if last != "" {
			after = last
		}
		var se *StatusError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &se), errors.Is(err, errStop):
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// errStop wraps an error of fn, which ends Stream.
var errStop = errors.New("client: stream stopped")

// streamOnce reads one connection of a stream; it returns the id of the
// last event (or of the opening cursor) it read.
func (c *Client) streamOnce(ctx context.Context, hc *http.Client, query url.Values, after string, fn func(StreamEvent) error) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+"/api/v1/stream?"+query.Encode(), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	req.Header.Set("Accept", "text/event-stream")
	if after != "" {
		req.Header.Set("Last-Event-ID", after)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return "", statusError(resp.StatusCode, data)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var last, id string // id: of the event being read, last once it is handled
	var ev StreamEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.Kind != "" {
				if err := fn(ev); err != nil {
					return last, errors.Join(errStop, err)
				}
			}
			if id != "" {
				last = id
			}
			ev, id = StreamEvent{}, ""
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
			ev.ID, _ = strconv.ParseInt(id, 10, 64)
		case strings.HasPrefix(line, "event: "):
			ev.Kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.Data = []byte(line[6:])
		}
	}
	return last, sc.Err()
}
