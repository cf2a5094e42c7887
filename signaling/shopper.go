package signaling

import (
	"crypto/ecdsa"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// Shoppers is how the merchant's shop vouches for its shoppers: it signs
// a token (a JWT: HS256 with a shared secret, or ES256 with its private
// key, whose public half is configured here) carrying the shopper's id in
// `sub`, and the player sends it. Per-viewer limits then count per shopper,
// across devices and sessions, and orders carry the shopper's id.
type Shoppers struct {
	Secret        []byte            // HS256, any stream without a secret of its own
	StreamSecrets map[string][]byte // HS256 per stream
	PublicKey     *ecdsa.PublicKey  // ES256
	// RequireForBuying refuses buys without a valid shopper token.
	RequireForBuying bool
	// Private streams need a valid shopper token to watch (WHEP, SSE).
	Private map[string]bool
}

// shopperClaims is what a shopper token carries. Stream, when set, limits
// the token to one stream.
type shopperClaims struct {
	Stream string `json:"stream,omitempty"`
	jwt.RegisteredClaims
}

// maxShopperID bounds the shop's shopper ids (printable ASCII).
const maxShopperID = 64

// verifyShopper checks a shopper token for a stream and returns the
// shopper's id.
func (s *Server) verifyShopper(stream, token string) (string, error) {
	keys := s.cfg.Shoppers
	var claims shopperClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		switch t.Method.Alg() {
		case "HS256":
			if secret := keys.StreamSecrets[stream]; len(secret) > 0 {
				return secret, nil
			}
			if len(keys.Secret) > 0 {
				return keys.Secret, nil
			}
		case "ES256":
			if keys.PublicKey != nil {
				return keys.PublicKey, nil
			}
		}
		return nil, fmt.Errorf("no %s key is configured for shopper tokens", t.Method.Alg())
	}, jwt.WithValidMethods([]string{"HS256", "ES256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(30*time.Second))
	if err != nil {
		return "", err
	}
	if claims.Stream != "" && stream != "" && claims.Stream != stream {
		return "", fmt.Errorf("the token is for stream %q", claims.Stream)
	}
	if n := len(claims.Subject); n == 0 || n > maxShopperID || strings.ContainsFunc(claims.Subject, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return "", errors.New("sub must be the shopper's id: 1-64 printable ASCII characters")
	}
	return claims.Subject, nil
}

// identity is who a viewer's request or session is.
type identity struct {
	viewer  string // overlay.ShopperPrefix + id for a shopper the shop vouched for
	shopper bool
	fresh   bool // an anonymous viewer made for this request or session
}

// identify says who is asking: a shopper (token in Vitrine-Shopper, or on
// WHEP the bearer token, or ?shopper= where a page cannot set headers),
// else the viewer of the viewer token, else a new anonymous viewer. A
// shopper token that does not verify is refused (401), not taken as
// anonymous: the shop meant to vouch. So is a private stream without one.
func (s *Server) identify(w http.ResponseWriter, r *http.Request, stream, viewerToken string) (identity, bool) {
	tok := r.Header.Get("Vitrine-Shopper")
	if tok == "" {
		tok = r.URL.Query().Get("shopper")
	}
	if tok == "" && strings.HasPrefix(r.URL.Path, "/whep/") {
		tok, _ = bearer(r)
		if s.isPeer(r) {
			tok = ""
		}
	}
	if tok != "" {
		id, err := s.verifyShopper(stream, tok)
		if err != nil {
			s.log.Warn("shopper token refused", "stream", stream, "err", err, "remote", s.clientIP(r))
			s.limits.refused.WithLabelValues("shopper_token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="vitrine", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid_shopper_token", "the shopper token does not verify: "+err.Error())
			return identity{}, false
		}
		return identity{viewer: overlay.ShopperPrefix + id, shopper: true}, true
	}
	if s.cfg.Shoppers.Private[stream] && !s.isPeer(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="vitrine"`)
		writeError(w, http.StatusUnauthorized, "shopper_required", "this stream is private: the shop's page must pass a shopper token")
		return identity{}, false
	}
	viewer, fresh := s.viewerID(viewerToken)
	return identity{viewer: viewer, fresh: fresh}, true
}

// buyRefusal is why a buy is refused before it reaches the store.
type buyRefusal struct {
	status  int
	code    string
	message string
	wait    time.Duration
}

// mayBuy applies the rules around a buy that are not the store's: a
// banned viewer, a stream that needs shoppers the shop vouched for, and for
// everyone the address's budget of buys per second and of new anonymous
// buyers (so that a script dropping its viewer token does not multiply the
// per-viewer limit). charged remembers that a session's new anonymous
// viewer has been paid for.
func (s *Server) mayBuy(who identity, ip string, room *chat.Room, charged *bool) *buyRefusal {
	switch {
	case room.Banned(who.viewer):
		return &buyRefusal{http.StatusForbidden, "banned", "you are banned from this stream", 0}
	case s.cfg.Shoppers.RequireForBuying && !who.shopper:
		return &buyRefusal{http.StatusUnauthorized, "shopper_required", "buying here needs the shop's sign-in: open the stream from the shop's page", 0}
	}
	if wait := s.limits.takeBuy(ip); wait > 0 {
		s.limits.refused.WithLabelValues("buys").Inc()
		return &buyRefusal{http.StatusTooManyRequests, "rate_limited", "too many buys from your address; wait a moment", wait}
	}
	if who.fresh && !*charged {
		if wait := s.limits.newBuyer(ip); wait > 0 {
			s.limits.refused.WithLabelValues("new_buyers").Inc()
			return &buyRefusal{http.StatusTooManyRequests, "too_many_viewers",
				"too many new viewers bought from your address; keep your viewer token (the page does) or sign in at the shop", wait}
		}
		*charged = true
	}
	return nil
}
