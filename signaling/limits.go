package signaling

import (
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/overlay"
)

// Limits bound what one client address may do, so that one script cannot
// take a node's sessions, its store or its sockets. A zero field turns
// its limit off. Exempt addresses (loopback by default: this machine, its
// tests and a local proxy) are not limited.
type Limits struct {
	RequestsPerSecond float64 // REST calls, after a burst of RequestBurst
	RequestBurst      int
	OffersPerMinute   float64 // WHIP and WHEP POSTs, after a burst of OfferBurst
	OfferBurst        int
	Sessions          int     // open WHIP and WHEP sessions
	EventStreams      int     // open SSE streams
	BuysPerSecond     float64 // buys, after a burst of BuyBurst
	BuyBurst          int
	// NewBuyersPer10Min: anonymous viewers new to the server (no viewer
	// token) that may buy from one address per 10 minutes.
	NewBuyersPer10Min int
	Exempt            []netip.Prefix
}

// limiter keeps each address's budgets.
type limiter struct {
	cfg     Limits
	log     *slog.Logger
	refused *prometheus.CounterVec

	mu     sync.Mutex
	byAddr map[string]*addrState
}

type addrState struct {
	requests, offers overlay.Bucket
	buys, buyers     overlay.Bucket
	sessions         int
	streams          int
	loggedAt         time.Time
}

func newLimiter(cfg Limits, log *slog.Logger, reg prometheus.Registerer) *limiter {
	l := &limiter{cfg: cfg, log: log, byAddr: map[string]*addrState{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitrine_limit_refusals_total",
			Help: "Requests refused by the per-address limits, by limit: requests, offers, sessions, event_streams, buys, new_buyers; and shopper tokens refused (shopper_token)."}, []string{"limit"})}
	for _, k := range []string{"requests", "offers", "sessions", "event_streams", "buys", "new_buyers", "shopper_token"} {
		l.refused.WithLabelValues(k)
	}
	reg.MustRegister(l.refused)
	return l
}

func (l *limiter) exempt(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, p := range l.cfg.Exempt {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// state returns ip's budgets; l.mu held. Addresses whose budgets are full
// and that hold nothing open are forgotten when the map grows, so a flood
// from many addresses cannot grow it without bound.
func (l *limiter) state(ip string, now time.Time) *addrState {
	st, ok := l.byAddr[ip]
	if ok {
		return st
	}
	if len(l.byAddr) >= 100_000 {
		for k, old := range l.byAddr {
			if old.sessions == 0 && old.streams == 0 && old.requests.Full(now) && old.offers.Full(now) && old.buys.Full(now) && old.buyers.Full(now) {
				delete(l.byAddr, k)
			}
		}
	}
	st = &addrState{
		requests: overlay.Bucket{Rate: l.cfg.RequestsPerSecond, Burst: float64(l.cfg.RequestBurst)},
		offers:   overlay.Bucket{Rate: l.cfg.OffersPerMinute / 60, Burst: float64(l.cfg.OfferBurst)},
		buys:     overlay.Bucket{Rate: l.cfg.BuysPerSecond, Burst: float64(l.cfg.BuyBurst)},
		buyers:   overlay.Bucket{Rate: float64(l.cfg.NewBuyersPer10Min) / 600, Burst: float64(l.cfg.NewBuyersPer10Min)},
	}
	l.byAddr[ip] = st
	return st
}

// take spends one request (or offer) of ip; it returns how long to wait
// when the budget is spent.
func (l *limiter) take(ip string, offer bool) time.Duration {
	if offer {
		return l.spend(ip, l.cfg.OffersPerMinute, func(st *addrState) *overlay.Bucket { return &st.offers })
	}
	return l.spend(ip, l.cfg.RequestsPerSecond, func(st *addrState) *overlay.Bucket { return &st.requests })
}

// takeBuy spends one of ip's buys.
func (l *limiter) takeBuy(ip string) time.Duration {
	return l.spend(ip, l.cfg.BuysPerSecond, func(st *addrState) *overlay.Bucket { return &st.buys })
}

// newBuyer spends one of ip's new anonymous buyers.
func (l *limiter) newBuyer(ip string) time.Duration {
	return l.spend(ip, float64(l.cfg.NewBuyersPer10Min), func(st *addrState) *overlay.Bucket { return &st.buyers })
}

// spend takes a token from one of ip's buckets (off when rate is 0).
func (l *limiter) spend(ip string, rate float64, bucket func(*addrState) *overlay.Bucket) time.Duration {
	if rate <= 0 || l.exempt(ip) {
		return 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return bucket(l.state(ip, now)).Take(now)
}

// open holds one of ip's sessions (or event streams) until release; ok is
// false when it has as many open as allowed.
func (l *limiter) open(ip string, stream bool) (release func(), ok bool) {
	limit := l.cfg.Sessions
	if stream {
		limit = l.cfg.EventStreams
	}
	if limit <= 0 || l.exempt(ip) {
		return func() {}, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(ip, time.Now())
	count := &st.sessions
	if stream {
		count = &st.streams
	}
	if *count >= limit {
		return nil, false
	}
	*count++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			*count--
			l.mu.Unlock()
		})
	}, true
}

// refuse answers 429 with Retry-After, counts it, and logs it at most once
// a minute per address (a flood must not flood the log too).
func (l *limiter) refuse(w http.ResponseWriter, r *http.Request, ip, limit string, wait time.Duration) {
	l.refused.WithLabelValues(limit).Inc()
	l.mu.Lock()
	st := l.state(ip, time.Now())
	logIt := time.Since(st.loggedAt) > time.Minute
	if logIt {
		st.loggedAt = time.Now()
	}
	l.mu.Unlock()
	if logIt {
		l.log.Warn("per-address limit reached", "limit", limit, "remote", ip, "path", r.URL.Path)
	}
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
	msg := map[string]string{
		"requests":      "too many requests from your address; slow down",
		"offers":        "too many WHIP/WHEP sessions started from your address; wait",
		"sessions":      "too many open sessions from your address; close some first",
		"event_streams": "too many open event streams from your address; close some first",
	}[limit]
	writeError(w, http.StatusTooManyRequests, "rate_limited", msg)
}

// limited applies the per-address request budgets to a route: WHIP and
// WHEP POSTs spend offers, the rest requests; an SSE stream is also held
// open against its count. Another node's pulls are not limited.
func (s *Server) limited(pattern string, h http.HandlerFunc) http.HandlerFunc {
	offer := strings.HasPrefix(pattern, "POST /whip/") || strings.HasPrefix(pattern, "POST /whep/")
	stream := strings.HasSuffix(pattern, "/events")
	if strings.HasPrefix(pattern, "OPTIONS ") {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		ip := s.clientIP(r)
		if offer && s.isPeer(r) {
			h(w, r)
			return
		}
		kind := "requests"
		if offer {
			kind = "offers"
		}
		if wait := s.limits.take(ip, offer); wait > 0 {
			s.limits.refuse(w, r, ip, kind, wait)
			return
		}
		if stream {
			release, ok := s.limits.open(ip, true)
			if !ok {
				s.limits.refuse(w, r, ip, "event_streams", 5*time.Second)
				return
			}
			defer release()
		}
		h(w, r)
	}
}
