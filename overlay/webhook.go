package overlay

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Webhook headers. The signature is HMAC-SHA256, keyed with the merchant's
// shared secret, over Vitrine-Timestamp + "." + body, written "v1=<hex>".
// Signing the timestamp lets a receiver refuse an old request replayed.
const (
	HeaderTimestamp = "Vitrine-Timestamp"
	HeaderSignature = "Vitrine-Signature"
	HeaderEventID   = "Vitrine-Event-Id"
	HeaderEventType = "Vitrine-Event-Type"
)

// Signature verification errors.
var (
	ErrBadSignature   = errors.New("webhook signature does not match")
	ErrStaleSignature = errors.New("webhook timestamp outside tolerance")
)

// Sign returns the Vitrine-Signature value for body sent at timestamp (the
// exact Vitrine-Timestamp header text).
func Sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// VerifySignature checks a webhook as a merchant receives it: the signature
// must match the secret, and the timestamp (Unix seconds) must be within
// tolerance of now, so a captured request cannot be replayed later. The
// signature header may list several comma-separated values (one per secret
// while a secret is rotated); one matching is enough.
func VerifySignature(secret, body []byte, timestamp, signature string, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: bad timestamp %q", ErrBadSignature, timestamp)
	}
	age := now.Sub(time.Unix(sec, 0))
	if age > tolerance || age < -tolerance {
		return fmt.Errorf("%w: sent %s ago, tolerance %s", ErrStaleSignature, age.Round(time.Second), tolerance)
	}
	want := []byte(Sign(secret, timestamp, body))
	for _, got := range strings.Split(signature, ",") {
		if hmac.Equal([]byte(strings.TrimSpace(got)), want) {
			return nil
		}
	}
	return ErrBadSignature
}

// Outbox is the part of a Store the webhook worker uses.
type Outbox interface {
	ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]Event, error)
	MarkDelivered(ctx context.Context, eventID string, now time.Time) error
	RetryEvent(ctx context.Context, eventID string, next time.Time, lastError string) error
}

// WebhookConfig configures a WebhookWorker. Zero values take the defaults.
type WebhookConfig struct {
	URL    string // the merchant's endpoint, http or https
	Secret []byte // shared with the merchant; signs every request
	// Client sends the requests; default: one with a 10 s timeout that does
	// not follow redirects.
	Client *http.Client
	// Concurrency bounds requests in flight (default 4), so a slow merchant
	// is not flooded.
	Concurrency int
	// Batch is how many due events one claim takes (default 32).
	Batch int
	// PollInterval is the wait when nothing is due (default 1 s).
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before a retry, which doubles
	// with each failed attempt (defaults 1 s and 10 min).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
	// Metrics, when set, counts deliveries by result.
	Metrics *Metrics
}

// WebhookWorker delivers outbox events to the merchant until acknowledged.
// Delivery is at least once: a merchant drops duplicates by Vitrine-Event-Id.
type WebhookWorker struct {
	cfg        WebhookConfig
	outbox     Outbox
	markFailed Throttle // the store could not record a delivery
}

// NewWebhookWorker checks cfg and fills in its defaults.
func NewWebhookWorker(outbox Outbox, cfg WebhookConfig) (*WebhookWorker, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: URL must be an absolute http(s) URL, got %q", cfg.URL)
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("webhook: secret must be at least 16 bytes")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: 10 * time.Second,
			// A redirect would turn the POST into a GET that a merchant may
			// answer 200 without ever seeing the event: treat it as a
			// failure, which is logged and retried.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 32
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Minute, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &WebhookWorker{cfg: cfg, outbox: outbox}, nil
}

// Run delivers events until ctx is done, then returns ctx's error.
func (w *WebhookWorker) Run(ctx context.Context) error {
	for {
		n, err := w.RunOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			w.cfg.Logger.Warn("webhook: claim events", "err", err)
		}
		if n > 0 && err == nil {
			continue // more may be due right away
		}
		t := time.NewTimer(w.cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// RunOnce claims the events due now, delivers them with bounded
// concurrency, and returns how many it attempted.
func (w *WebhookWorker) RunOnce(ctx context.Context) (int, error) {
	// The lease outlives the slowest request, so an event is not claimed
	// again while its delivery may still be in flight.
	lease := 2*w.requestTimeout() + 10*time.Second
	events, err := w.outbox.ClaimEvents(ctx, time.Now(), w.cfg.Batch, lease)
	if err != nil {
		return 0, err
	}
	slots := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, e := range events {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			w.deliver(ctx, e)
		})
	}
	wg.Wait()
	return len(events), nil
}

func (w *WebhookWorker) requestTimeout() time.Duration {
	if w.cfg.Client.Timeout > 0 {
		return w.cfg.Client.Timeout
	}
	return time.Minute
}

func (w *WebhookWorker) deliver(ctx context.Context, e Event) {
	postErr := w.post(ctx, e)
	// The bookkeeping outlives a shutdown: an event the merchant accepted
	// must be marked, or it will be sent again.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if w.cfg.Metrics != nil {
		result := "delivered"
		if postErr != nil {
			result = "failed"
		}
		w.cfg.Metrics.Webhooks.WithLabelValues(result).Inc()
	}
	if postErr == nil {
		if err := w.outbox.MarkDelivered(bctx, e.ID, time.Now()); err != nil {
			// The event goes again later: delivery is at least once.
			if n, write := w.markFailed.Count(); write {
				w.cfg.Logger.Error("webhook: delivered, but the store could not record it; it will be sent again", "event", e.ID, "failures_since_last_line", n, "err", err)
			}
		}
		return
	}
	wait := Backoff(e.Attempts, w.cfg.MinBackoff, w.cfg.MaxBackoff)
	w.cfg.Logger.Info("webhook: delivery failed, will retry", "event", e.ID, "type", e.Type,
		"attempt", e.Attempts, "retry_in", wait, "err", postErr)
	if err := w.outbox.RetryEvent(bctx, e.ID, time.Now().Add(wait), postErr.Error()); err != nil {
		// The claim's lease runs out and the event comes due again anyway.
		w.cfg.Logger.Error("webhook: schedule retry", "event", e.ID, "err", err)
	}
}

func (w *WebhookWorker) post(ctx context.Context, e Event) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(e.Payload))
	if err != nil {
		return err
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vitrine-webhook/1")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(w.cfg.Secret, ts, e.Payload))
	req.Header.Set(HeaderEventID, e.ID)
	req.Header.Set(HeaderEventType, e.Type)
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read a little of the body: enough to log why, and to let the
	// connection be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("merchant answered %s: %s", resp.Status, strings.TrimSpace(string(snippet)))
	}
	return nil
}

// Backoff is the wait before retry number attempt (1 = after the first
// failure): lo doubled per attempt, capped at hi, plus up to 20% jitter so
// events that failed together do not all retry together.
func Backoff(attempt int, lo, hi time.Duration) time.Duration {
	if lo <= 0 {
		return 0
	}
	hi = max(hi, lo)
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if jitter := d / 5; jitter > 0 {
		d += rand.N(jitter)
	}
	return d
}
