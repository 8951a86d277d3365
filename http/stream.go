package http

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub"
)

// streamWriteTimeout is how long one write to a stream consumer may take:
// a consumer that reads slower than the hub writes is cut off when the
// connection's buffers fill, instead of the hub keeping its backlog.
const streamWriteTimeout = 10 * time.Second

func (s *Server) registerStream() {
	s.api("GET", "/api/v1/stream", iothub.RoleViewer, s.stream)
}

// changeFilter reads the filter of a stream or a rule listing from the
// query: productKey (of the caller's org), deviceKey, kinds.
func (s *Server) changeFilter(r *http.Request, p iothub.Principal) (iothub.DataFilter, error) {
	q := r.URL.Query()
	f := iothub.DataFilter{ProductKey: q.Get("productKey"), DeviceKey: q.Get("deviceKey")}
	if !p.Bootstrap {
		f.OrgID = p.OrgID
	}
	var err error
	if f.Kinds, err = iothub.ParseDataKinds(q["kinds"]); err != nil {
		return f, err
	}
	if f.DeviceKey != "" && f.ProductKey == "" {
		return f, iothub.Errorf(iothub.EINVALID, "deviceKey needs productKey")
	}
	if f.ProductKey != "" {
		if _, err := s.product(r.Context(), p, f.ProductKey); err != nil {
			return f, err
		}
	}
	return f, nil
}

// cursor reads where a stream resumes: Last-Event-ID, else ?after=; 0
// (no cursor) starts with what comes next.
func cursor(r *http.Request) (int64, bool, error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("after")
	}
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, iothub.Errorf(iothub.EINVALID, "cursor %.32q is not an event id", v)
	}
	return n, true, nil
}

// stream serves GET /api/v1/stream: the org's changes as server-sent
// events, from the cursor on or from now.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	if s.Feed == nil {
		return iothub.Errorf(iothub.EINTERNAL, "this hub keeps no change log")
	}
	f, err := s.changeFilter(r, p)
	if err != nil {
		return err
	}
	after, resume, err := cursor(r)
	if err != nil {
		return err
	}
	if resume {
		err = s.Feed.Check(r.Context(), after)
	} else {
		after, err = s.Feed.Newest(r.Context())
	}
	if err != nil {
		return err
	}
	f.After = after
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// The cursor the stream starts after, so a client that got no event
	// yet can still resume from here.
	if _, err := fmt.Fprintf(w, "retry: 1000\nid: %d\n\n", after); err != nil {
		return nil
	}
	if rc.Flush() != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.Feed.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	var b strings.Builder
	_ = s.Feed.Follow(ctx, f, func(changes []iothub.DataChange) error {
		b.Reset()
		for _, ch := range changes {
			fmt.Fprintf(&b, "id: %d\nevent: %s\ndata: %s\n\n", ch.ID, ch.Kind, ch.Data)
		}
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := w.Write([]byte(b.String())); err != nil {
			return err
		}
		return rc.Flush()
	})
	return nil // the response has begun: errors end the stream, nothing else
}
