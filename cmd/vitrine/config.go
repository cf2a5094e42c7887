package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/signaling"
	"go.yaml.in/yaml/v3"
)

// Config is everything Vitrine reads at start. Precedence, lowest first:
// built-in defaults, the YAML file (-config), environment variables, flags.
// configs/vitrine.yaml is the annotated example.
type Config struct {
	HTTP       string `yaml:"http"`
	Data       string `yaml:"data"`
	PublicURL  string `yaml:"public_url"`
	AdminToken string `yaml:"admin_token"`
	// TrustedProxies are reverse proxies (IPs or CIDRs) whose
	// X-Forwarded-For is believed (env VITRINE_TRUSTED_PROXIES, comma
	// separated).
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Store is a PostgreSQL DSN; empty means SQLite in the data directory.
	Store string `yaml:"store"`

	WebRTC struct {
		ListenIP        string                `yaml:"listen_ip"`
		UDPPort         int                   `yaml:"udp_port"`
		TCPPort         int                   `yaml:"tcp_port"`
		NAT1To1IPs      []string              `yaml:"nat_1to1_ips"`
		IncludeLoopback bool                  `yaml:"include_loopback"`
		SocketBuffer    int                   `yaml:"socket_buffer"`
		UDPGSO          bool                  `yaml:"udp_gso"`
		ICEServers      []signaling.ICEServer `yaml:"ice_servers"`
	} `yaml:"webrtc"`

	Streams struct {
		Grace            time.Duration `yaml:"grace"`
		KeyframeInterval time.Duration `yaml:"keyframe_interval"`
		StaleAfter       time.Duration `yaml:"stale_after"`
		Takeover         bool          `yaml:"takeover"`
		// ReencodeKeyframesOver: RTMP/RTSP H.264 whose keyframes come
		// further apart is re-encoded for WebRTC viewers, who then get a
		// keyframe as they join. 0 = never. Env
		// VITRINE_REENCODE_KEYFRAMES_OVER.
		ReencodeKeyframesOver time.Duration `yaml:"reencode_keyframes_over"`
		// JoinReplay: original, squeezed or off (env VITRINE_JOIN_REPLAY);
		// GOPCacheBytes and GOPCacheAge bound the cached group of pictures.
		JoinReplay    string        `yaml:"join_replay"`
		GOPCacheBytes int           `yaml:"gop_cache_bytes"`
		GOPCacheAge   time.Duration `yaml:"gop_cache_age"`
	} `yaml:"streams"`

	Commerce struct {
		ReservationTTL time.Duration `yaml:"reservation_ttl"`
		WebhookURL     string        `yaml:"webhook_url"`
		WebhookSecret  string        `yaml:"webhook_secret"`
		// Shopper tokens the merchant's shop signs (signaling.Shoppers):
		// HS256 with ShopperSecret (env VITRINE_SHOPPER_SECRET) or a
		// stream's own secret, ES256 with the public key in PEM.
		ShopperSecret        string            `yaml:"shopper_secret"`
		StreamShopperSecrets map[string]string `yaml:"stream_shopper_secrets"`
		ShopperPublicKeyFile string            `yaml:"shopper_public_key_file"`
		RequireShopperToken  bool              `yaml:"require_shopper_token"`
		// PrivateStreams can be watched only with a shopper token.
		PrivateStreams []string `yaml:"private_streams"`
	} `yaml:"commerce"`

	// Limits per client address (signaling.Limits); 0 turns one off.
	Limits struct {
		RequestsPerSecond float64  `yaml:"requests_per_second"`
		RequestBurst      int      `yaml:"request_burst"`
		OffersPerMinute   float64  `yaml:"offers_per_minute"`
		OfferBurst        int      `yaml:"offer_burst"`
		Sessions          int      `yaml:"sessions"`
		EventStreams      int      `yaml:"event_streams"`
		BuysPerSecond     float64  `yaml:"buys_per_second"`
		BuyBurst          int      `yaml:"buy_burst"`
		NewBuyersPerIP    int      `yaml:"new_buyers_per_ip"`
		Exempt            []string `yaml:"exempt"`
	} `yaml:"limits"`

	Chat struct {
		// Retention is how long chat messages and the moderation log are
		// kept (env VITRINE_CHAT_RETENTION).
		Retention time.Duration `yaml:"retention"`
		// NewNamesPerIP is how many new chat identities one address may
		// create per 10 minutes.
		NewNamesPerIP int `yaml:"new_names_per_ip"`
	} `yaml:"chat"`

	CORS struct {
		AllowOrigins []string `yaml:"allow_origins"`
	} `yaml:"cors"`

	Demo struct {
		Enabled bool   `yaml:"enabled"`
		Key     string `yaml:"key"`
	} `yaml:"demo"`

	// Metrics: Listen serves /metrics on its own address (and no longer on
	// the HTTP port); Token, when set, is the bearer token /metrics requires.
	// TLS makes the http address serve HTTPS (HTTP/2 and HTTP/1.1): with a
	// certificate and key from files, or from Let's Encrypt for
	// ACMEDomains (cached in the data directory, renewed by themselves).
	TLS struct {
		CertFile    string   `yaml:"cert_file"`
		KeyFile     string   `yaml:"key_file"`
		ACMEDomains []string `yaml:"acme_domains"`
		ACMEEmail   string   `yaml:"acme_email"`
		// ACMEDirectory is the ACME server's directory URL; "" = Let's
		// Encrypt. Its TLS certificate must be trusted by the system (or
		// by SSL_CERT_FILE, for a private ACME server).
		ACMEDirectory string `yaml:"acme_directory"`
		// ACMEHTTP answers ACME's HTTP challenge and redirects plain HTTP
		// to HTTPS, with ACME on; "" = off.
		ACMEHTTP string `yaml:"acme_http"`
	} `yaml:"tls"`

	Metrics struct {
		Listen string `yaml:"listen"`
		Token  string `yaml:"token"`
	} `yaml:"metrics"`

	// Cluster: nodes sharing one PostgreSQL store and one NATS server
	// (signaling/cluster). Empty NATSURL: this node runs alone.
	Cluster struct {
		NATSURL      string        `yaml:"nats_url"`
		AdvertiseURL string        `yaml:"advertise_url"`
		NodeID       string        `yaml:"node_id"`
		Secret       string        `yaml:"secret"`
		MaxViewers   int           `yaml:"max_viewers"`
		RelayGrace   time.Duration `yaml:"relay_grace"`
		DrainTimeout time.Duration `yaml:"drain_timeout"`
	} `yaml:"cluster"`

	RTMP   RTMPConfig `yaml:"rtmp"`
	RTSP   RTSPConfig `yaml:"rtsp"`
	FFmpeg string     `yaml:"ffmpeg"` // for AAC to Opus; "ffmpeg" on the PATH when empty

	Log struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
}

func defaultConfig() Config {
	var c Config
	c.HTTP = ":8080"
	c.Data = "./data"
	c.WebRTC.UDPPort = 8189
	c.WebRTC.IncludeLoopback = true
	c.WebRTC.SocketBuffer = 4 << 20
	c.WebRTC.UDPGSO = true
	c.Streams.Grace = 10 * time.Second
	c.Streams.KeyframeInterval = 250 * time.Millisecond
	c.Streams.StaleAfter = 3 * time.Second
	c.Streams.ReencodeKeyframesOver = 2 * time.Second
	c.Streams.JoinReplay = string(media.ReplayOriginal)
	c.Streams.GOPCacheBytes = media.DefaultGOPCacheBytes
	c.Streams.GOPCacheAge = media.DefaultGOPCacheAge
	c.Commerce.ReservationTTL = 5 * time.Minute
	c.TrustedProxies = []string{}
	c.Limits.RequestsPerSecond, c.Limits.RequestBurst = 20, 100
	c.Limits.OffersPerMinute, c.Limits.OfferBurst = 30, 20
	c.Limits.Sessions, c.Limits.EventStreams = 50, 20
	c.Limits.BuysPerSecond, c.Limits.BuyBurst, c.Limits.NewBuyersPerIP = 5, 20, 20
	c.Commerce.StreamShopperSecrets = map[string]string{}
	c.Commerce.PrivateStreams = []string{}
	c.Limits.Exempt = []string{"127.0.0.0/8", "::1/128"}
	c.TLS.ACMEDomains = []string{}
	c.TLS.ACMEHTTP = ":80"
	c.Chat.Retention = 30 * 24 * time.Hour
	c.Chat.NewNamesPerIP = 10
	c.CORS.AllowOrigins = []string{"*"}
	c.Demo.Enabled = true
	c.RTMP.Address = ":1935"
	c.RTMP.ReadTimeout = 10 * time.Second
	c.RTSP.Address = ":8554"
	c.RTSP.UDPRTPAddress = ":8000"
	c.RTSP.UDPRTCPAddress = ":8001"
	c.Cluster.RelayGrace = 30 * time.Second
	c.Cluster.DrainTimeout = 20 * time.Second
	c.Log.Level = "info"
	c.Log.Format = "text"
	return c
}

// loadConfig applies the file, the environment and the flags in args.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("vitrine serve", flag.ContinueOnError)
	configPath := fs.String("config", getenv("VITRINE_CONFIG"), "YAML config file (env VITRINE_CONFIG)")
	httpAddr := fs.String("http", "", "HTTP listen address (default :8080; env VITRINE_HTTP)")
	data := fs.String("data", "", "data directory (default ./data; env VITRINE_DATA)")
	udpPort := fs.Int("udp-port", -1, "UDP port for all WebRTC media (default 8189; env VITRINE_UDP_PORT)")
	rtmpAddr := fs.String("rtmp", "", "RTMP ingest listen address (default :1935; env VITRINE_RTMP)")
	rtspAddr := fs.String("rtsp", "", "RTSP listen address (default :8554; env VITRINE_RTSP)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *configPath != "" {
		raw, err := os.ReadFile(*configPath)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", *configPath, err)
		}
	}
	envString := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	envString("VITRINE_HTTP", &c.HTTP)
	envString("VITRINE_DATA", &c.Data)
	envString("VITRINE_PUBLIC_URL", &c.PublicURL)
	envString("VITRINE_ADMIN_TOKEN", &c.AdminToken)
	envString("VITRINE_DEMO_KEY", &c.Demo.Key)
	envString("VITRINE_STORE", &c.Store)
	envString("VITRINE_WEBHOOK_URL", &c.Commerce.WebhookURL)
	envString("VITRINE_WEBHOOK_SECRET", &c.Commerce.WebhookSecret)
	envString("VITRINE_SHOPPER_SECRET", &c.Commerce.ShopperSecret)
	if v := getenv("VITRINE_PRIVATE_STREAMS"); v != "" {
		c.Commerce.PrivateStreams = strings.Split(v, ",")
	}
	envString("VITRINE_LOG_LEVEL", &c.Log.Level)
	envString("VITRINE_RTMP", &c.RTMP.Address)
	envString("VITRINE_RTSP", &c.RTSP.Address)
	envString("VITRINE_METRICS_LISTEN", &c.Metrics.Listen)
	envString("VITRINE_METRICS_TOKEN", &c.Metrics.Token)
	envString("VITRINE_NATS_URL", &c.Cluster.NATSURL)
	envString("VITRINE_ADVERTISE_URL", &c.Cluster.AdvertiseURL)
	envString("VITRINE_NODE_ID", &c.Cluster.NodeID)
	envString("VITRINE_CLUSTER_SECRET", &c.Cluster.Secret)
	if v := getenv("VITRINE_MAX_VIEWERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return c, fmt.Errorf("VITRINE_MAX_VIEWERS: %q is not a viewer count (0 for no cap)", v)
		}
		c.Cluster.MaxViewers = n
	}
	if v := getenv("VITRINE_UDP_PORT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("VITRINE_UDP_PORT: %q is not a port number", v)
		}
		c.WebRTC.UDPPort = n
	}
	if v := getenv("VITRINE_REENCODE_KEYFRAMES_OVER"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return c, fmt.Errorf("VITRINE_REENCODE_KEYFRAMES_OVER: %q is not a duration (2s, or 0 for never)", v)
		}
		c.Streams.ReencodeKeyframesOver = d
	}
	envString("VITRINE_TLS_CERT_FILE", &c.TLS.CertFile)
	envString("VITRINE_TLS_KEY_FILE", &c.TLS.KeyFile)
	if v := getenv("VITRINE_TLS_ACME_DOMAINS"); v != "" {
		c.TLS.ACMEDomains = strings.Split(v, ",")
	}
	envString("VITRINE_TLS_ACME_DIRECTORY", &c.TLS.ACMEDirectory)
	if v := getenv("VITRINE_TRUSTED_PROXIES"); v != "" {
		c.TrustedProxies = strings.Split(v, ",")
	}
	if v := getenv("VITRINE_CHAT_RETENTION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("VITRINE_CHAT_RETENTION: %q is not a duration (720h)", v)
		}
		c.Chat.Retention = d
	}
	envString("VITRINE_JOIN_REPLAY", &c.Streams.JoinReplay)
	if v := getenv("VITRINE_NAT_1TO1_IPS"); v != "" {
		c.WebRTC.NAT1To1IPs = strings.Split(v, ",")
	}
	if *httpAddr != "" {
		c.HTTP = *httpAddr
	}
	if *data != "" {
		c.Data = *data
	}
	if *rtmpAddr != "" {
		c.RTMP.Address = *rtmpAddr
	}
	if *rtspAddr != "" {
		c.RTSP.Address = *rtspAddr
	}
	if *udpPort >= 0 {
		c.WebRTC.UDPPort = *udpPort
	}
	// "off" turns a listener off from a flag or the environment.
	if c.RTMP.Address == "off" {
		c.RTMP.Address = ""
	}
	if c.RTSP.Address == "off" {
		c.RTSP.Address = ""
	}
	if c.Streams.ReencodeKeyframesOver < 0 {
		return c, fmt.Errorf("streams.reencode_keyframes_over %s: want 0 (never) or a duration", c.Streams.ReencodeKeyframesOver)
	}
	switch media.JoinReplay(c.Streams.JoinReplay) {
	case media.ReplaySqueezed, media.ReplayOriginal, media.ReplayOff:
	default:
		return c, fmt.Errorf("streams.join_replay %q: want original, squeezed or off", c.Streams.JoinReplay)
	}
	if c.Streams.GOPCacheBytes < 0 || c.Streams.GOPCacheAge < 0 {
		return c, fmt.Errorf("streams.gop_cache_bytes and gop_cache_age must not be negative")
	}
	switch {
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return c, fmt.Errorf("tls.cert_file and tls.key_file go together (VITRINE_TLS_CERT_FILE, VITRINE_TLS_KEY_FILE)")
	case c.TLS.CertFile != "" && len(c.TLS.ACMEDomains) > 0:
		return c, fmt.Errorf("tls: a certificate from files or from ACME (tls.acme_domains), not both")
	case c.TLS.ACMEDirectory != "" && !strings.HasPrefix(c.TLS.ACMEDirectory, "https://"):
		return c, fmt.Errorf("tls.acme_directory %q: want the https:// URL of an ACME directory", c.TLS.ACMEDirectory)
	}
	if _, err := c.trustedProxies(); err != nil {
		return c, err
	}
	if _, err := prefixes("limits.exempt", c.Limits.Exempt); err != nil {
		return c, err
	}
	if c.Commerce.ShopperSecret != "" && len(c.Commerce.ShopperSecret) < 32 {
		return c, fmt.Errorf("commerce.shopper_secret (VITRINE_SHOPPER_SECRET) must be at least 32 characters")
	}
	if c.Limits.BuysPerSecond < 0 || c.Limits.NewBuyersPerIP < 0 || (c.Limits.BuysPerSecond > 0 && c.Limits.BuyBurst < 1) {
		return c, fmt.Errorf("limits: buys_per_second, buy_burst and new_buyers_per_ip must be 0 (off) or more")
	}
	if c.Limits.RequestsPerSecond < 0 || c.Limits.OffersPerMinute < 0 || c.Limits.Sessions < 0 || c.Limits.EventStreams < 0 ||
		(c.Limits.RequestsPerSecond > 0 && c.Limits.RequestBurst < 1) || (c.Limits.OffersPerMinute > 0 && c.Limits.OfferBurst < 1) {
		return c, fmt.Errorf("limits: rates and counts must be 0 (off) or more, and a rate needs a burst of at least 1")
	}
	if c.Chat.Retention <= 0 || c.Chat.NewNamesPerIP < 1 {
		return c, fmt.Errorf("chat.retention must be a positive duration and chat.new_names_per_ip at least 1")
	}
	if c.Cluster.NATSURL != "" {
		switch {
		case !strings.HasPrefix(c.Store, "postgres://") && !strings.HasPrefix(c.Store, "postgresql://"):
			return c, fmt.Errorf("cluster.nats_url is set: the nodes of a cluster share a PostgreSQL store; set store (VITRINE_STORE) to its postgres:// DSN")
		case c.Cluster.AdvertiseURL == "":
			return c, fmt.Errorf("cluster.advertise_url (VITRINE_ADVERTISE_URL) is needed in a cluster: the http(s) base URL other nodes and viewers reach this node at")
		case len(c.Cluster.Secret) < 16:
			return c, fmt.Errorf("cluster.secret (VITRINE_CLUSTER_SECRET) must be at least 16 characters, the same on every node")
		case c.Cluster.MaxViewers < 0:
			return c, fmt.Errorf("cluster.max_viewers must be 0 (no cap) or more")
		}
		if c.Cluster.NodeID == "" {
			c.Cluster.NodeID, _ = os.Hostname()
		}
	}
	if c.WebRTC.UDPPort < 0 || c.WebRTC.UDPPort > 65535 {
		return c, fmt.Errorf("udp port %d out of range", c.WebRTC.UDPPort)
	}
	return c, nil
}

// trustedProxies parses trusted_proxies.
func (c Config) trustedProxies() ([]netip.Prefix, error) {
	return prefixes("trusted_proxies", c.TrustedProxies)
}

// prefixes parses a list of addresses or CIDR prefixes.
func prefixes(what string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range list {
		v = strings.TrimSpace(v)
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is neither an address nor a CIDR prefix", what, v)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// shoppers builds the shopper-token checks of the commerce config.
func (c Config) shoppers() (signaling.Shoppers, error) {
	sh := signaling.Shoppers{RequireForBuying: c.Commerce.RequireShopperToken, Private: map[string]bool{}, StreamSecrets: map[string][]byte{}}
	if c.Commerce.ShopperSecret != "" {
		sh.Secret = []byte(c.Commerce.ShopperSecret)
	}
	for stream, secret := range c.Commerce.StreamShopperSecrets {
		if len(secret) < 32 {
			return sh, fmt.Errorf("commerce.stream_shopper_secrets: the secret of %s must be at least 32 characters", stream)
		}
		sh.StreamSecrets[stream] = []byte(secret)
	}
	for _, stream := range c.Commerce.PrivateStreams {
		sh.Private[stream] = true
	}
	if c.Commerce.ShopperPublicKeyFile != "" {
		raw, err := os.ReadFile(c.Commerce.ShopperPublicKeyFile)
		if err != nil {
			return sh, fmt.Errorf("commerce.shopper_public_key_file: %w", err)
		}
		key, err := jwt.ParseECPublicKeyFromPEM(raw)
		if err != nil {
			return sh, fmt.Errorf("commerce.shopper_public_key_file %s: %w", c.Commerce.ShopperPublicKeyFile, err)
		}
		sh.PublicKey = key
	}
	if (sh.RequireForBuying || len(sh.Private) > 0) && sh.Secret == nil && len(sh.StreamSecrets) == 0 && sh.PublicKey == nil {
		return sh, fmt.Errorf("commerce: require_shopper_token and private_streams need a shopper_secret, stream_shopper_secrets or shopper_public_key_file")
	}
	return sh, nil
}
