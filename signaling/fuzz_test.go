package signaling

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media/alloc"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

type noMedia struct{}

func (noMedia) Latest() (uint32, bool)      { return 0, false }
func (noMedia) At(time.Time) (uint32, bool) { return 0, false }

// anyQuality stands for the viewer's media session, which takes a quality
// choice; the choice's own checks are media's (TestQualityMessage).
type anyQuality struct{}

func (anyQuality) SetQuality(alloc.Choice) error { return nil }

// FuzzViewerMessage feeds the data channel's handler whatever a viewer
// could send, against a real show, chat room and SQLite store: it must
// answer every message (or, for a reaction, take it silently) and never
// panic.
func FuzzViewerMessage(f *testing.F) {
	for _, seed := range []string{
		`{"type":"buy","sku":"mug","qty":1,"key":"key-0001"}`,
		`{"type":"buy","sku":"mug","qty":-5,"key":""}`,
		`{"type":"confirm","order_id":"ord_x"}`,
		`{"type":"quality","value":"low"}`,
		`{"type":"chat.name","name":"Ada"}`,
		`{"type":"chat","text":"<script>alert(1)</script>","question":true,"key":"k"}`,
		`{"type":"chat","text":"\u202eevil\u0000"}`,
		`{"type":"react","value":"heart"}`,
		`{"type":"react","value":"boom"}`,
		`{"type":7}`, `[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	ctx := context.Background()
	store, err := sqlstore.Open(ctx, filepath.Join(f.TempDir(), "fuzz.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer store.Close()
	if _, err := store.CreateProduct(ctx, overlay.Product{SKU: "mug", Title: "Mug", PriceMinor: 900, Currency: "EUR", Stock: 1_000_000_000, Active: true}); err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	srv := New(Config{ViewerSecret: []byte("fuzz-secret")}, nil, nil, store, reg, reg, log)
	show, err := overlay.NewShow(ctx, "s", noMedia{}, srv.showCfg)
	if err != nil {
		f.Fatal(err)
	}
	defer show.Close()
	if _, err := show.Cue(ctx, overlay.CueRequest{Type: overlay.CueShowCard, SKU: "mug"}); err != nil {
		f.Fatal(err)
	}
	room, err := chat.NewRoom(ctx, "s", noMedia{}, show.OnScreen, srv.chatCfg)
	if err != nil {
		f.Fatal(err)
	}
	defer room.Close()
	f.Fuzz(func(t *testing.T, raw []byte) {
		vs := viewerSession{show: show, room: room, who: identity{viewer: "v1"}, charged: new(bool), ip: "192.0.2.1", q: anyQuality{}, limit: &overlay.Bucket{Rate: 1e6, Burst: 1e6}}
		reply, ok := srv.onViewerMessage(vs, raw)
		if ok && (reply.V != 1 || reply.Type == "") {
			t.Fatalf("%q: reply %+v has no version or type", raw, reply)
		}
		if reply.Type == "error" && (reply.Code == "" || reply.Message == "") {
			t.Fatalf("%q: error without code or message: %+v", raw, reply)
		}
		if reply.Code == "internal" || reply.Code == "store_unavailable" {
			t.Fatalf("%q: the store failed: %+v", raw, reply)
		}
	})
}

// FuzzTokens feeds viewer tokens and shopper tokens whatever a client
// could send: nothing panics, a viewer token that does not verify is a new
// viewer, and a shopper token verifies only as signed by the shop's key.
func FuzzTokens(f *testing.F) {
	secret := []byte("fuzz-shop-secret-0123456789abcdef")
	good, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "cust-1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		f.Fatal(err)
	}
	s := &Server{cfg: Config{ViewerSecret: []byte("fuzz-viewer-secret"), Shoppers: Shoppers{Secret: secret}}}
	for _, seed := range []string{good, good[:len(good)-2], "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "a.b.c", "", ".", "v1.", s.viewerToken("v1"), "x.y"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		if id, fresh := s.viewerID(tok); !fresh && s.viewerToken(id) != tok {
			t.Fatalf("%q taken as viewer %q", tok, id)
		}
		if sub, err := s.verifyShopper("demo", tok); err == nil {
			if sub != "cust-1" { // only the shop's one signed token (or an encoding of it) verifies
				t.Fatalf("%q verified as shopper %q", tok, sub)
			}
		}
	})
}
