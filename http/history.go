package http

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/iothub/iothub"
)

// parseTime reads an RFC 3339 time or unix milliseconds.
func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.UnixMilli(ms).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, iothub.Errorf(iothub.EINVALID, "%s must be an RFC 3339 time or unix milliseconds", name)
	}
	return t, nil
}

// history serves a device's posts: with from, to or cursor, a page in
// sample-time order and the next page's cursor; without, the newest posts,
// newest first, as before.
func history[T any](s *Server, key string,
	recent func(iothub.Store, context.Context, string, string, int) ([]T, error),
	page func(iothub.Store, context.Context, string, string, iothub.HistoryQuery) ([]T, string, error)) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
		d, err := s.device(r.Context(), p, r)
		if err != nil {
			return err
		}
		q := r.URL.Query()
		var hq iothub.HistoryQuery
		if hq.Limit, err = queryInt(r, "limit", 100, 1000); err != nil {
			return err
		}
		if !q.Has("from") && !q.Has("to") && !q.Has("cursor") {
			list, err := recent(s.Store, r.Context(), d.ProductKey, d.DeviceKey, hq.Limit)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, map[string]any{key: list})
			return nil
		}
		if hq.From, err = parseTime("from", q.Get("from")); err != nil {
			return err
		}
		if hq.To, err = parseTime("to", q.Get("to")); err != nil {
			return err
		}
		if !hq.From.IsZero() && !hq.To.IsZero() && !hq.To.After(hq.From) {
			return iothub.Errorf(iothub.EINVALID, "to must be after from")
		}
		hq.Cursor = q.Get("cursor")
		list, next, err := page(s.Store, r.Context(), d.ProductKey, d.DeviceKey, hq)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]any{key: list, "nextCursor": next})
		return nil
	}
}
