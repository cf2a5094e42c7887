package chat

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// Names gives viewers their display names, server-wide: a name is unique
// across streams, changes at most once per NameLock, and an address may
// create only so many new chat identities (a first name) per 10 minutes,
// so that a banned viewer who drops its token cannot come back endlessly.
type Names struct {
	store Store
	perIP float64 // new names per address per 10 minutes
	now   func() time.Time

	mu    sync.Mutex
	cache map[string]cachedName
	ips   map[string]*overlay.Bucket
}

type cachedName struct {
	name    string
	changed time.Time
	read    time.Time
}

// nameCacheFor bounds how stale a name read from the store can be here (a
// name set on another node).
const nameCacheFor = time.Minute

// NewNames serves names from store; perIP is how many new identities an
// address may create per 10 minutes (at least 1).
func NewNames(store Store, perIP int, now func() time.Time) *Names {
	if now == nil {
		now = time.Now
	}
	return &Names{store: store, perIP: float64(max(perIP, 1)), now: now, cache: map[string]cachedName{}, ips: map[string]*overlay.Bucket{}}
}

// Get returns a viewer's name, "" when it has none yet.
func (n *Names) Get(ctx context.Context, viewer string) (string, error) {
	c, err := n.get(ctx, viewer)
	return c.name, err
}

func (n *Names) get(ctx context.Context, viewer string) (cachedName, error) {
	now := n.now()
	n.mu.Lock()
	c, ok := n.cache[viewer]
	n.mu.Unlock()
	if ok && now.Sub(c.read) < nameCacheFor {
		return c, nil
	}
	name, changed, err := n.store.ChatName(ctx, viewer)
	if err != nil {
		return cachedName{}, err
	}
	c = cachedName{name: name, changed: changed, read: now}
	n.remember(viewer, c)
	return c, nil
}

func (n *Names) remember(viewer string, c cachedName) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.cache) >= 100_000 {
		clear(n.cache) // bounded: a cold read costs one indexed query
	}
	n.cache[viewer] = c
}

// Set gives viewer the name; ip is the address it asks from. Refusals:
// invalid_name, name_taken, name_locked, rate_limited.
func (n *Names) Set(ctx context.Context, viewer, ip, name string) (string, error) {
	clean, _, err := ValidName(name)
	if err != nil {
		return "", err
	}
	now := n.now()
	cur, err := n.get(ctx, viewer)
	if err != nil {
		return "", err
	}
	if cur.name == clean {
		return clean, nil
	}
	if cur.name != "" {
		if wait := cur.changed.Add(NameLock).Sub(now); wait > 0 {
			r := refuse("name_locked", "a name can change once per %d minutes", int(NameLock.Minutes()))
			r.RetryAfter = wait
			return "", r
		}
	} else if wait := n.newIdentity(ip, now, false); wait > 0 {
		r := refuse("rate_limited", "too many new chat names from your address; try again later")
		r.RetryAfter = wait
		return "", r
	}
	if err := n.store.SetChatName(ctx, viewer, clean, now); err != nil {
		if errors.Is(err, ErrNameTaken) {
			return "", refuse("name_taken", "%q is taken; pick another name", clean)
		}
		return "", err
	}
	if cur.name == "" {
		// Only a name given counts against the address: a viewer who tries
		// names already taken has created nothing yet.
		n.newIdentity(ip, now, true)
	}
	n.remember(viewer, cachedName{name: clean, changed: now, read: now})
	return clean, nil
}

// newIdentity says how long to wait for a new identity from ip's budget
// (0: one is there), and with spend takes it.
func (n *Names) newIdentity(ip string, now time.Time, spend bool) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	b, ok := n.ips[ip]
	if !ok {
		if len(n.ips) >= 100_000 {
			for k, old := range n.ips {
				if old.Full(now) {
					delete(n.ips, k)
				}
			}
		}
		b = &overlay.Bucket{Rate: n.perIP / 600, Burst: n.perIP}
		n.ips[ip] = b
	}
	if !spend {
		return b.Wait(now)
	}
	b.Take(now)
	return 0
}
