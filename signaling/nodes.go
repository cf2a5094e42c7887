package signaling

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// Cluster is what the HTTP edge asks of the other nodes (signaling/cluster
// implements it); nil on a single node, where everything runs here.
type Cluster interface {
	// Redirect says where a new viewer goes: "" to stay, or another
	// node's base URL; a reason with no URL means full with nowhere to go.
	Redirect() (target, reason string)
	// Nodes are the other live nodes' base URLs, least loaded first.
	Nodes() []string
	// Origin is the base URL of the node a stream's creator is on, when
	// that is another node.
	Origin(stream string) string
	// Mirror is the show of a stream another node originates, relayed
	// here; nil when the show runs here.
	Mirror(stream string, st *media.Stream) *overlay.Mirror
	// Mirrored is the mirror of a stream relayed here now, nil if none;
	// it never starts a relay.
	Mirrored(stream string) *overlay.Mirror
	// PeerToken checks another node's bearer token (its pulls).
	PeerToken(tok string) bool
	// Share carries a chat room's events to the other nodes.
	Share(stream string, ev chat.Event)
	Status() any
}

// SetCluster joins the edge to a cluster; call it before serving.
func (s *Server) SetCluster(c Cluster) { s.cluster = c }

// viewerShow is a stream's show as viewers use it: the show itself where
// it runs, its mirror on a node relaying the stream.
type viewerShow interface {
	Subscribe(send func([]byte)) (cancel func())
	Snapshot() overlay.Message
	Buy(ctx context.Context, viewer, sku string, qty int64, key string) (overlay.BuyResult, error)
	Confirm(ctx context.Context, viewer, orderID string) (overlay.Order, error)
}

// viewerShowOr503 is the show viewers of the stream get here; mirrored
// tells which.
func (s *Server) viewerShowOr503(w http.ResponseWriter, name string, st *media.Stream) (sh viewerShow, mirrored, ok bool) {
	if s.cluster != nil {
		if m := s.cluster.Mirror(name, st); m != nil {
			return m, true, true
		}
	}
	show, ok := s.showOr503(w, name, st)
	return show, false, ok
}

// proxyToShow sends a request that changes a show (cues, run-of-show) to
// the node running it, the stream's origin, when that is another node. It
// reports whether it did.
func (s *Server) proxyToShow(w http.ResponseWriter, r *http.Request, name string) bool {
	if s.cluster == nil {
		return false
	}
	origin := s.cluster.Origin(name)
	if origin == "" {
		return false
	}
	target, err := url.Parse(origin)
	if err != nil {
		s.internalError(w, "proxy to origin", err)
		return true
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
		// This node already answered CORS; two sets of headers would make
		// browsers refuse the answer.
		ModifyResponse: func(res *http.Response) error {
			for k := range res.Header {
				if strings.HasPrefix(k, "Access-Control-") {
					res.Header.Del(k)
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			s.log.Warn("proxy to origin failed", "stream", name, "origin", origin, "err", err)
			w.Header().Set("Retry-After", "2")
			writeError(w, http.StatusBadGateway, "origin_unreachable", "the node running this show did not answer; try again")
		},
	}
	proxy.ServeHTTP(w, r)
	return true
}

// redirectViewer answers a viewer's WHEP POST with 307 to another node when
// this one is full or draining, and reports whether it did.
func (s *Server) redirectViewer(w http.ResponseWriter, r *http.Request, name string) bool {
	if s.cluster == nil {
		return false
	}
	target, reason := s.cluster.Redirect()
	switch {
	case target != "":
		loc := target + "/whep/" + url.PathEscape(name)
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", loc)
		s.log.Debug("whep: viewer sent to another node", "stream", name, "reason", reason, "to", target)
		writeError(w, http.StatusTemporaryRedirect, "redirect", "this node is "+reason+"; watch from "+target)
		return true
	case reason != "":
		w.Header().Set("Retry-After", "5")
		s.log.Warn("whep: viewer refused, every node is full", "stream", name)
		writeError(w, http.StatusServiceUnavailable, "full", "every node is at its viewer cap; try again shortly")
		return true
	}
	return false
}

// isPeer reports whether the request is another node's pull.
func (s *Server) isPeer(r *http.Request) bool {
	if s.cluster == nil {
		return false
	}
	tok, ok := bearer(r)
	return ok && s.cluster.PeerToken(tok)
}

// ReconnectMessage asks a player to watch from another node (docs/protocol.md).
type ReconnectMessage struct {
	V      int    `json:"v"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Reason string `json:"reason"`
}

// MoveViewers asks viewers to reconnect to target(): every viewer of this
// node when stream is "" (drain), or the viewers of stream whose overlay
// comes from a show here (the stream is relayed now: they reconnect to get
// the relay's). It returns how many were asked.
func (s *Server) MoveViewers(stream string, target func() string, reason string) int {
	s.mu.Lock()
	var move []*session
	for _, sess := range s.sessions {
		if sess.kind != "whep" || sess.peer || sess.send == nil {
			continue
		}
		if stream == "" || (sess.stream == stream && !sess.mirrored) {
			move = append(move, sess)
		}
	}
	s.mu.Unlock()
	asked := 0
	for _, sess := range move {
		to := target()
		if to == "" {
			break // nowhere to go: they stay
		}
		b, _ := json.Marshal(ReconnectMessage{V: 1, Type: "reconnect", URL: to, Reason: reason})
		sess.send(b)
		asked++
	}
	return asked
}

// ViewerCount is the WHEP viewers of this node, not counting other nodes'
// pulls; PullCount is those pulls.
func (s *Server) ViewerCount() int { return s.countSessions(false) }

func (s *Server) PullCount() int { return s.countSessions(true) }

func (s *Server) countSessions(peer bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		if sess.kind == "whep" && sess.peer == peer {
			n++
		}
	}
	return n
}

// CloseShow stops the show of a stream running here (its origin is now
// another node, which runs it from the store).
func (s *Server) CloseShow(stream string) {
	s.showsMu.Lock()
	sh, ok := s.shows[stream]
	delete(s.shows, stream)
	s.showsMu.Unlock()
	if ok {
		sh.Close()
	}
}

// StockChanged marks a product's stock changed on the stream's show, if it
// runs here (a buy on another node).
func (s *Server) StockChanged(stream, sku string) {
	s.showsMu.Lock()
	sh := s.shows[stream]
	s.showsMu.Unlock()
	if sh != nil {
		sh.StockChanged(sku)
	}
}

// SetDraining makes /readyz answer 503 "draining" (load balancers stop
// sending new requests) while viewers move away.
func (s *Server) SetDraining() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
}

func (s *Server) getCluster(w http.ResponseWriter, _ *http.Request) {
	if s.cluster == nil {
		writeError(w, http.StatusNotFound, "not_clustered", "this node runs alone (cluster.nats_url is not set)")
		return
	}
	writeJSON(w, http.StatusOK, s.cluster.Status())
}

// DrainWait waits until no viewer is left here or the timeout passes.
func (s *Server) DrainWait(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s.ViewerCount() == 0 {
			return 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s.ViewerCount()
}
