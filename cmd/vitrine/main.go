// Command vitrine is the one Vitrine binary: `vitrine` (or `vitrine serve`)
// runs the server on embedded defaults or a config file; `vitrine load`
// load-tests a running server; `vitrine version` prints the build.
package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
	"github.com/vitrine-live/vitrine/signaling"
	"github.com/vitrine-live/vitrine/signaling/cluster"
	"github.com/vitrine-live/vitrine/web"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "version":
		fmt.Println("vitrine", version, commit())
	case "load":
		err = load(args, os.Stdout, os.Stderr)
	default:
		fmt.Fprintf(os.Stderr, "vitrine: unknown command %q (commands: serve, load, version)\n", cmd)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vitrine:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	cfg, err := loadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := start(cfg, os.Stderr)
	if err != nil {
		return err
	}
	a.printWelcome(os.Stdout)
	<-ctx.Done()
	a.log.Info("shutting down")
	a.drain()
	return a.Close()
}

// app is a running Vitrine: what serve starts and tests drive.
type app struct {
	cfg      Config
	log      *slog.Logger
	rtc      *media.WebRTC
	streams  *signaling.Streams
	edge     *signaling.Server
	http     *http.Server
	listener net.Listener
	demo     signaling.StreamDef
	tokenGen bool
	store    *sqlstore.Store
	stop     context.CancelFunc
	workers  sync.WaitGroup
	proto    *protocols
	cluster  *cluster.Cluster // nil on a single node
	// nodeChanged tells the cluster at once when a creator comes or goes
	// (set once the cluster is joined).
	nodeChanged atomic.Pointer[func()]

	// metricsHTTP serves /metrics on metrics.listen, when set.
	metricsHTTP     *http.Server
	metricsListener net.Listener
	tls             bool   // the http address serves HTTPS
	stopACME        func() // closes ACME's plain-HTTP listener
}

func start(cfg Config, logOut io.Writer) (*app, error) {
	log := newLogger(cfg, logOut)
	a := &app{cfg: cfg, log: log}
	if a.cfg.AdminToken == "" {
		a.cfg.AdminToken = signaling.NewKey()
		a.tokenGen = true
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vitrine_build_info", Help: "Always 1; labels give the version and commit."}, []string{"version", "commit"})
	buildInfo.WithLabelValues(version, commit()).Set(1)
	reg.MustRegister(buildInfo)
	mm := media.NewMetrics(reg)

	rtc, err := media.NewWebRTC(media.WebRTCConfig{
		ListenIP:        cfg.WebRTC.ListenIP,
		UDPPort:         cfg.WebRTC.UDPPort,
		TCPPort:         cfg.WebRTC.TCPPort,
		NAT1To1IPs:      cfg.WebRTC.NAT1To1IPs,
		IncludeLoopback: cfg.WebRTC.IncludeLoopback,
		SocketBuffer:    cfg.WebRTC.SocketBuffer,
		NoGSO:           !cfg.WebRTC.UDPGSO,
	}, mm, log)
	if err != nil {
		return nil, err
	}
	a.rtc = rtc
	opts := media.StreamOptions{Grace: cfg.Streams.Grace, KeyframeInterval: cfg.Streams.KeyframeInterval, StaleAfter: cfg.Streams.StaleAfter,
		ReencodeKeyframesOver: cfg.Streams.ReencodeKeyframesOver, JoinReplay: media.JoinReplay(cfg.Streams.JoinReplay),
		GOPCacheBytes: cfg.Streams.GOPCacheBytes, GOPCacheAge: cfg.Streams.GOPCacheAge}
	storeDSN := cfg.Store
	if storeDSN == "" {
		storeDSN = filepath.Join(cfg.Data, "vitrine.db")
	}
	a.store, err = sqlstore.Open(context.Background(), storeDSN)
	if err != nil {
		rtc.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	newStream := func(name string) *media.Stream {
		st := media.NewStream(name, opts, mm, log)
		st.Watch(func(media.State, string) {
			if fn := a.nodeChanged.Load(); fn != nil {
				go (*fn)()
			}
		})
		return st
	}
	// On PostgreSQL the stream definitions are the cluster's, in the store;
	// a single node's streams.json moves there once.
	streamsFile := filepath.Join(cfg.Data, "streams.json")
	if a.store.Dialect() == "postgres" {
		var n int
		n, err = signaling.ImportStreamsFile(context.Background(), a.store, streamsFile)
		if n > 0 {
			log.Info("streams: imported streams.json into PostgreSQL (now streams.json.imported)", "streams", n)
		}
		if err == nil {
			a.streams, err = signaling.OpenStreamsInStore(context.Background(), a.store, newStream)
		}
	} else {
		a.streams, err = signaling.OpenStreams(streamsFile, newStream)
	}
	if err != nil {
		a.store.Close()
		rtc.Close()
		return nil, err
	}
	if cfg.Demo.Enabled {
		err := a.ensureDemo()
		if err == nil {
			// Only into an empty catalog: an operator's products stay.
			err = overlay.SeedDemoCatalog(context.Background(), a.store)
		}
		if err != nil {
			a.store.Close()
			a.streams.Close()
			rtc.Close()
			return nil, err
		}
	}

	secret, err := loadSecret(filepath.Join(cfg.Data, "secret"))
	if err != nil {
		a.store.Close()
		a.streams.Close()
		rtc.Close()
		return nil, err
	}
	if cfg.Cluster.NATSURL != "" {
		// Every node must accept every viewer's token.
		secret = clusterViewerSecret(cfg.Cluster.Secret)
	}
	om := overlay.NewMetrics(reg)
	proxies, _ := cfg.trustedProxies() // both checked by loadConfig
	exempt, _ := prefixes("limits.exempt", cfg.Limits.Exempt)
	shoppers, err := cfg.shoppers()
	if err != nil {
		a.store.Close()
		a.streams.Close()
		rtc.Close()
		return nil, err
	}
	a.edge = signaling.New(signaling.Config{
		TrustedProxies: proxies,
		Limits: signaling.Limits{RequestsPerSecond: cfg.Limits.RequestsPerSecond, RequestBurst: cfg.Limits.RequestBurst,
			OffersPerMinute: cfg.Limits.OffersPerMinute, OfferBurst: cfg.Limits.OfferBurst,
			Sessions: cfg.Limits.Sessions, EventStreams: cfg.Limits.EventStreams, Exempt: exempt,
			BuysPerSecond: cfg.Limits.BuysPerSecond, BuyBurst: cfg.Limits.BuyBurst, NewBuyersPer10Min: cfg.Limits.NewBuyersPerIP},
		Shoppers:     shoppers,
		ViewerSecret: secret,
		Show:         overlay.ShowConfig{ReservationTTL: cfg.Commerce.ReservationTTL, Metrics: om, Log: log},
		AdminToken:   a.cfg.AdminToken,
		AllowOrigins: cfg.CORS.AllowOrigins,
		ICEServers:   cfg.WebRTC.ICEServers,
		Chat: chat.Config{Store: a.store, Names: chat.NewNames(a.store, cfg.Chat.NewNamesPerIP, nil),
			Metrics: chat.NewMetrics(reg), Log: log},
		Takeover: cfg.Streams.Takeover,
		Version:  version,
		Commit:   commit(),
	}, rtc, a.streams, a.store, reg, reg, log)
	if cfg.Cluster.NATSURL != "" {
		if err := a.joinCluster(reg, om); err != nil {
			a.store.Close()
			a.streams.Close()
			rtc.Close()
			return nil, err
		}
	}
	// Before the first request: what the last run left on screen and on
	// sale comes back, and sales that ran out meanwhile end now.
	if err := a.edge.OpenShows(context.Background()); err != nil {
		a.store.Close()
		a.streams.Close()
		rtc.Close()
		return nil, fmt.Errorf("store: %w", err)
	}

	tlsConf, stopACME, err := tlsFor(cfg, log)
	if err != nil {
		a.edge.Shows(func(sh *overlay.Show) { sh.Close() })
		a.store.Close()
		a.streams.Close()
		rtc.Close()
		return nil, err
	}
	a.tls, a.stopACME = tlsConf != nil, stopACME
	a.listener, err = net.Listen("tcp", cfg.HTTP)
	if err != nil {
		stopACME()
		a.edge.Shows(func(sh *overlay.Show) { sh.Close() })
		a.store.Close()
		a.streams.Close()
		rtc.Close()
		return nil, fmt.Errorf("http: %w", err)
	}
	metrics := requireToken(cfg.Metrics.Token, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if cfg.Metrics.Listen != "" {
		a.metricsListener, err = net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			stopACME()
			a.listener.Close()
			a.edge.Shows(func(sh *overlay.Show) { sh.Close() })
			a.store.Close()
			a.streams.Close()
			rtc.Close()
			return nil, fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics)
		// Profiles only on the private metrics listener, behind the same
		// token: an operator can profile a live server
		// (go tool pprof http://host:port/debug/pprof/profile).
		mux.Handle("GET /debug/pprof/", requireToken(cfg.Metrics.Token, http.HandlerFunc(pprof.Index)))
		mux.Handle("GET /debug/pprof/profile", requireToken(cfg.Metrics.Token, http.HandlerFunc(pprof.Profile)))
		a.metricsHTTP = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := a.metricsHTTP.Serve(a.metricsListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		metrics = http.NotFoundHandler()
	}
	a.http = &http.Server{
		Handler:           withMetrics(a.edge.Handler(web.Mount), cfg.Metrics.Listen == "" && cfg.Metrics.Token == "", metrics),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         tlsConf,
	}
	go func() {
		serve := func() error { return a.http.Serve(a.listener) }
		if a.tls {
			// ServeTLS adds HTTP/2 to what the TLS handshake offers.
			serve = func() error { return a.http.ServeTLS(a.listener, "", "") }
		}
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	ctx, stop := context.WithCancel(context.Background())
	a.stop = stop
	a.workers.Go(func() { a.sweepReservations(ctx, om) })
	a.workers.Go(func() { a.watchOutbox(ctx, om) })
	a.workers.Go(func() { a.pruneStore(ctx, om) })
	if cfg.Commerce.WebhookURL != "" {
		worker, err := overlay.NewWebhookWorker(a.store, overlay.WebhookConfig{
			URL: cfg.Commerce.WebhookURL, Secret: []byte(cfg.Commerce.WebhookSecret), Logger: log, Metrics: om})
		if err != nil {
			a.Close()
			return nil, err
		}
		a.workers.Go(func() { _ = worker.Run(ctx) })
	}
	if err := a.startProtocols(reg, log); err != nil {
		a.Close()
		return nil, err
	}
	a.edge.SetReady(true)
	log.Info("vitrine started", "http", a.listener.Addr().String(), "udp", rtc.UDPAddr().String(), "version", version)
	return a, nil
}

// ensureDemo creates the demo stream on first start, and gives it the key
// from VITRINE_DEMO_KEY when one is set.
func (a *app) ensureDemo() error {
	def, _, ok := a.streams.Get("demo")
	var err error
	switch {
	case !ok:
		def, err = a.streams.Create("demo", a.cfg.Demo.Key)
		if errors.Is(err, signaling.ErrStreamExists) {
			// Another node of the cluster created it a moment ago.
			if err = a.streams.Reload(context.Background()); err == nil {
				if def, _, ok = a.streams.Get("demo"); !ok {
					err = signaling.ErrStreamUnknown
				}
			}
		}
	case a.cfg.Demo.Key != "" && !def.CheckKey(a.cfg.Demo.Key):
		def, err = a.streams.SetKey("demo", a.cfg.Demo.Key)
	}
	if err != nil {
		return fmt.Errorf("demo stream: %w", err)
	}
	a.demo = def
	return nil
}

// baseURL is how people reach the server: the configured public URL, or
// localhost on the HTTP port.
func (a *app) baseURL() string {
	if a.cfg.PublicURL != "" {
		return strings.TrimRight(a.cfg.PublicURL, "/")
	}
	_, port, _ := net.SplitHostPort(a.listener.Addr().String())
	switch {
	case len(a.cfg.TLS.ACMEDomains) > 0 && port == "443":
		return "https://" + strings.TrimSpace(a.cfg.TLS.ACMEDomains[0])
	case len(a.cfg.TLS.ACMEDomains) > 0:
		return "https://" + strings.TrimSpace(a.cfg.TLS.ACMEDomains[0]) + ":" + port
	case a.tls:
		return "https://localhost:" + port
	}
	return "http://localhost:" + port
}

func (a *app) printWelcome(w io.Writer) {
	base := a.baseURL()
	fmt.Fprintf(w, "\nVitrine %s is running.\n\n", version)
	if a.demo.Name != "" {
		fmt.Fprintf(w, "  Studio (go live from a browser): %s/studio?stream=demo\n", base)
		fmt.Fprintf(w, "  Watch page:                      %s/watch/demo\n", base)
		fmt.Fprintf(w, "  Stream key of 'demo':            %s\n", a.demo.Key)
		fmt.Fprintf(w, "  OBS (Settings > Stream > WHIP):  server %s/whip/demo  bearer token %s\n", base, a.demo.Key)
		fmt.Fprintf(w, "  WHEP playback URL:               %s/whep/demo\n", base)
		a.printProtocolURLs(w)
	}
	if a.tokenGen {
		fmt.Fprintf(w, "  Admin token (generated; set VITRINE_ADMIN_TOKEN to keep one): %s\n", a.cfg.AdminToken)
	}
	metrics := base + "/metrics"
	if a.metricsListener != nil {
		metrics = "http://" + a.metricsListener.Addr().String() + "/metrics"
	}
	fmt.Fprintf(w, "  REST API: %s/api/v1/streams   metrics: %s\n\n", base, metrics)
}

// Close shuts down gracefully: stop taking requests, end sessions, close
// sockets.
func (a *app) Close() error {
	a.edge.SetReady(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.http.Shutdown(ctx)
	a.stopACME()
	if a.metricsHTTP != nil {
		err = errors.Join(err, a.metricsHTTP.Shutdown(ctx))
	}
	a.stop()
	a.workers.Wait()
	a.closeProtocols()
	if a.cluster != nil {
		a.cluster.Close()
	}
	a.edge.Shows(func(sh *overlay.Show) { sh.Close() })
	a.edge.CloseRooms()
	a.streams.Close()
	return errors.Join(err, a.rtc.Close(), a.store.Close())
}

// sweepReservations returns the units of reservations nobody confirmed in
// time, and tells the shows so viewers see the stock come back.
func (a *app) sweepReservations(ctx context.Context, m *overlay.Metrics) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := a.store.ExpireReservations(ctx, time.Now())
		if err != nil {
			a.log.Warn("expire reservations", "err", err)
			m.StoreErrors.WithLabelValues("expire_reservations").Inc()
			continue
		}
		if n > 0 {
			a.stockReturned()
			if a.cluster != nil {
				a.cluster.ReservationsExpired()
			}
		}
	}
}

// stockReturned tells the shows running here that reservations gave units
// back, so viewers see the stock come back.
func (a *app) stockReturned() {
	a.edge.Shows(func(sh *overlay.Show) {
		for _, sku := range sh.CurrentSKUs() {
			sh.StockChanged(sku)
		}
	})
}

// pruneStore deletes old idempotency keys and acknowledged events, at start
// and every few minutes, a batch at a time until none is left.
func (a *app) pruneStore(ctx context.Context, m *overlay.Metrics) {
	tick := time.NewTicker(5 * time.Minute)
	defer tick.Stop()
	for {
		var keys, events int64
		for range 100 {
			k, e, err := a.store.Prune(ctx, time.Now())
			if err == nil {
				var c int64
				c, err = a.store.PruneChat(ctx, time.Now().Add(-a.cfg.Chat.Retention))
				e += c
			}
			keys, events = keys+k, events+e
			if err != nil {
				if ctx.Err() == nil {
					a.log.Warn("prune store", "err", err)
					m.StoreErrors.WithLabelValues("prune").Inc()
				}
				break
			}
			if k == 0 && e == 0 {
				break
			}
		}
		if keys > 0 || events > 0 {
			a.log.Info("store pruned", "idempotency_keys", keys, "delivered_events", events)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// watchOutbox keeps the outbox depth gauge current: a growing outbox means
// the merchant is not acknowledging.
func (a *app) watchOutbox(ctx context.Context, m *overlay.Metrics) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if n, err := a.store.OutboxDepth(ctx); err == nil {
			m.OutboxDepth.Set(float64(n))
		} else if ctx.Err() == nil {
			m.StoreErrors.WithLabelValues("outbox_depth").Inc()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// withMetrics serves /metrics with h instead of the edge's own route, unless
// the edge's open route is what the config asks for.
func withMetrics(edge http.Handler, keepEdge bool, h http.Handler) http.Handler {
	if keepEdge {
		return edge
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			h.ServeHTTP(w, r)
			return
		}
		edge.ServeHTTP(w, r)
	})
}

// requireToken lets through only requests bearing token; an empty token lets
// everything through.
func requireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "metrics need the bearer token (metrics.token)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// loadSecret reads the server's signing secret, creating it on first start.
func loadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) >= 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("secret: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	return b, nil
}

func newLogger(cfg Config, out io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}

func commit() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
