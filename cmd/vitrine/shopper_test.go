package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/client"
)

const shopSecret = "shop-secret-for-tests-0123456789abcdef"

func shopperToken(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func hs(t *testing.T, sub string) string {
	return shopperToken(t, jwt.SigningMethodHS256, []byte(shopSecret), jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()})
}

// buyAs POSTs a buy with the given headers.
func buyAs(t *testing.T, base, key string, hdr map[string]string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/api/v1/streams/demo/buy", strings.NewReader(fmt.Sprintf(`{"sku":"cap-1","qty":1,"key":%q}`, key)))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out, res.Header
}

// TestShopperTokens: a shopper the shop vouched for (HS256 or ES256) is
// one buyer on every device, its orders and webhooks carry its id, bad
// tokens are refused; an anonymous script that drops its viewer token gets
// a bounded number of identities; a stream can require shoppers to buy,
// and a private stream to watch.
func TestShopperTokens(t *testing.T) {
	dir := t.TempDir()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pubDER, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	pubFile := filepath.Join(dir, "shop.pub.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	setup := func(edit func(*Config)) (*app, string) {
		a, base := testApp(t, func(c *Config) {
			c.Commerce.ShopperSecret, c.Commerce.ShopperPublicKeyFile = shopSecret, pubFile
			c.Limits.Exempt = nil
			c.Limits.NewBuyersPerIP = 3
			c.Limits.BuysPerSecond, c.Limits.BuyBurst = 100, 100
			if edit != nil {
				edit(c)
			}
		})
		if _, err := a.store.CreateProduct(context.Background(), overlay.Product{SKU: "cap-1", Title: "Cap", PriceMinor: 2000,
			Currency: "EUR", Stock: 100, PerViewerLimit: 1, Active: true}); err != nil {
			t.Fatal(err)
		}
		if code, _, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key, map[string]any{"type": "card.show", "sku": "cap-1"}); code != 201 {
			t.Fatal("card.show")
		}
		return a, base
	}
	a, base := setup(nil)

	// One shopper, two devices (HTTP and WebRTC): one unit, its id on the order.
	code, res, _ := buyAs(t, base, "shopper-buy-1", map[string]string{"Vitrine-Shopper": hs(t, "cust-42")})
	order, _ := res["order"].(map[string]any)
	if code != 200 || res["outcome"] != "reserved" || order["shopper_id"] != "cust-42" || order["viewer_id"] != "shopper:cust-42" {
		t.Fatalf("shopper buy: %d %v", code, res)
	}
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	phone := shopAs(t, api, base+"/whep/demo", hs(t, "cust-42"), "phone")
	if r := phone.reply(t, map[string]any{"type": "buy", "sku": "cap-1", "qty": 1, "key": "shopper-buy-2"}, "buy.result", "error"); r["result"].(map[string]any)["outcome"] != "limit_reached" {
		t.Errorf("the same shopper on another device: %v, want limit_reached", r)
	}
	if w := phone.find(t, "welcome", nil); w["viewer"] != nil {
		t.Errorf("a shopper's welcome carries a viewer token: %v", w)
	}
	es := shopperToken(t, jwt.SigningMethodES256, ecKey, jwt.MapClaims{"sub": "cust-43", "exp": time.Now().Add(time.Hour).Unix()})
	if code, res, _ := buyAs(t, base, "shopper-buy-3", map[string]string{"Vitrine-Shopper": es}); code != 200 || res["outcome"] != "reserved" {
		t.Errorf("ES256 shopper: %d %v", code, res)
	}
	// The webhook's event carries the shopper's id.
	events, err := a.store.ClaimEvents(context.Background(), time.Now(), 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range events {
		found = found || strings.Contains(string(e.Payload), `"shopper_id":"cust-42"`)
	}
	if !found {
		t.Errorf("no order event with shopper_id cust-42 in %d events", len(events))
	}

	// Tokens that do not verify: refused, never taken as anonymous.
	other := []byte("another-shop-secret-0123456789abcdef")
	for name, tok := range map[string]string{
		"wrong secret": shopperToken(t, jwt.SigningMethodHS256, other, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}),
		"expired":      shopperToken(t, jwt.SigningMethodHS256, []byte(shopSecret), jwt.MapClaims{"sub": "x", "exp": time.Now().Add(-time.Hour).Unix()}),
		"no expiry":    shopperToken(t, jwt.SigningMethodHS256, []byte(shopSecret), jwt.MapClaims{"sub": "x"}),
		"no sub":       shopperToken(t, jwt.SigningMethodHS256, []byte(shopSecret), jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}),
		"other stream": shopperToken(t, jwt.SigningMethodHS256, []byte(shopSecret), jwt.MapClaims{"sub": "x", "stream": "other", "exp": time.Now().Add(time.Hour).Unix()}),
		"alg none":     "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",
		"garbage":      "not.a.jwt",
	} {
		if code, res, _ := buyAs(t, base, "bad-"+strings.ReplaceAll(name, " ", "-"), map[string]string{"Vitrine-Shopper": tok}); code != 401 || errCode(res) != "invalid_shopper_token" {
			t.Errorf("%s: %d %v", name, code, res)
		}
	}

	// Anonymous: a script dropping its token each time is a new viewer each
	// time, but only 3 new buyers per address (then 429), and a viewer that
	// keeps its token is still itself.
	var reserved, refused int
	for i := range 8 {
		code, res, h := buyAs(t, base, fmt.Sprintf("anonymous-%02d", i), nil)
		switch {
		case code == 200 && res["outcome"] == "reserved":
			reserved++
		case code == 429 && errCode(res) == "too_many_viewers" && h.Get("Retry-After") != "":
			refused++
		default:
			t.Errorf("anonymous buy %d: %d %v", i, code, res)
		}
	}
	if reserved != 3 || refused != 5 {
		t.Errorf("8 token-less buys from one address with a per-viewer limit of 1: %d reserved, %d refused; want 3 and 5", reserved, refused)
	}

	// A stream that needs shoppers to buy, and a private one to watch.
	_, strict := setup(func(c *Config) { c.Commerce.RequireShopperToken = true; c.Commerce.PrivateStreams = []string{"demo"} })
	if code, res, _ := buyAs(t, strict, "strict-anon", nil); code != 401 || errCode(res) != "shopper_required" {
		t.Errorf("anonymous buy where shoppers are required: %d %v", code, res)
	}
	if code, res, _ := buyAs(t, strict, "strict-shopper", map[string]string{"Vitrine-Shopper": hs(t, "cust-7")}); code != 200 || res["outcome"] != "reserved" {
		t.Errorf("shopper buy where shoppers are required: %d %v", code, res)
	}
	req, _ := http.NewRequest("POST", strict+"/whep/demo", strings.NewReader("v=0\r\n"))
	req.Header.Set("Content-Type", "application/sdp")
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 401 || res.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("WHEP on a private stream without a token: %v %v", res.StatusCode, err)
	}
	shopAs(t, api, strict+"/whep/demo", hs(t, "cust-8"), "private") // watches with one
	for tok, want := range map[string]int{"": 401, hs(t, "cust-9"): 200} {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", strict+"/api/v1/streams/demo/events?shopper="+tok, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != want {
			t.Errorf("SSE of a private stream, token %t: %v %v, want %d", tok != "", res.StatusCode, err, want)
		}
		if res != nil {
			io.Copy(io.Discard, io.LimitReader(res.Body, 1))
			res.Body.Close()
		}
		cancel()
		req, _ = http.NewRequest("GET", strict+"/api/v1/streams/demo/overlay?shopper="+tok, nil)
		if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != want {
			t.Errorf("the overlay of a private stream, token %t: %v %v, want %d", tok != "", res.StatusCode, err, want)
		} else {
			res.Body.Close()
		}
	}
}
