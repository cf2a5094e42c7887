package chat_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/overlay/chat"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

type noClock struct{}

func (noClock) Latest() (uint32, bool) { return 0, false }

// wire is a subscriber that keeps what it is sent.
type wire struct {
	mu   sync.Mutex
	msgs []map[string]any
	at   []time.Time
}

func (w *wire) send(b []byte) {
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	w.mu.Lock()
	w.msgs = append(w.msgs, m)
	w.at = append(w.at, time.Now())
	w.mu.Unlock()
}

func (w *wire) count(typ string) (msgs, items int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if m["type"] == typ {
			msgs++
			items += len(m["messages"].([]any))
		}
	}
	return msgs, items
}

func openRoom(t *testing.T) (*chat.Room, *chat.Names) {
	t.Helper()
	store, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "chat.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	names := chat.NewNames(store, 3, nil)
	room, err := chat.NewRoom(context.Background(), "s", noClock{}, func() string { return "" },
		chat.Config{Store: store, Names: names, Metrics: chat.NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(room.Close)
	return room, names
}

// TestBatching: a message after a quiet moment goes out at once; a burst
// goes out in a few batches, nothing lost.
func TestBatching(t *testing.T) {
	room, names := openRoom(t)
	ctx := context.Background()
	w := &wire{}
	room.Subscribe(ctx, "", w.send)
	for i := range 40 {
		if _, err := names.Set(ctx, fmt.Sprintf("v%d", i), fmt.Sprintf("10.0.0.%d", i), fmt.Sprintf("viewer %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := room.Post(ctx, chat.Post{Viewer: "v0", Text: "first"}); err != nil {
		t.Fatal(err)
	}
	if msgs, _ := w.count("chat"); msgs != 1 {
		t.Fatalf("a message after a quiet moment was not sent at once (%d chat messages on the wire)", msgs)
	}
	for i := range 40 {
		if _, err := room.Post(ctx, chat.Post{Viewer: fmt.Sprintf("v%d", i), Text: fmt.Sprintf("burst %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// A subscriber who comes while a batch waits gets each message once:
	// in its snapshot or in the batch, not both.
	late := &wire{}
	room.Subscribe(ctx, "", late.send)
	deadline := time.Now().Add(2 * time.Second)
	for {
		// The batch goes to one subscriber after the other: wait for the
		// late one's copy too.
		msgs, items := w.count("chat")
		if _, lateItems := late.count("chat"); items == 41 && (lateItems >= 40 || time.Now().After(deadline)) {
			if msgs > 3 {
				t.Errorf("41 messages in %d chat messages: a burst should go out in one or two batches", msgs)
			}
			t.Logf("41 messages went out in %d chat messages", msgs)
			late.mu.Lock()
			seen := map[string]int{}
			for _, m := range late.msgs {
				for _, c := range m["messages"].([]any) {
					seen[c.(map[string]any)["text"].(string)]++
				}
			}
			late.mu.Unlock()
			for i := range 40 {
				if n := seen[fmt.Sprintf("burst %d", i)]; n != 1 {
					t.Errorf("the late subscriber got burst %d %d times", i, n)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 s: %d of 41 messages on the wire", items)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOneSendPerTick: in a busy room (a message every 20 ms, taps all
// along) each viewer gets one data-channel message per 125 ms, reaction
// counts riding in the chat batches at most every 250 ms; nothing lost.
func TestOneSendPerTick(t *testing.T) {
	room, names := openRoom(t)
	ctx := context.Background()
	w := &wire{}
	room.Subscribe(ctx, "", w.send)
	const posts = 75
	for i := range 40 {
		if _, err := names.Set(ctx, fmt.Sprintf("v%d", i), fmt.Sprintf("10.0.0.%d", i), fmt.Sprintf("viewer %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for i := range posts {
		if _, err := room.Post(ctx, chat.Post{Viewer: fmt.Sprintf("v%d", i%40), Text: fmt.Sprintf("m%d", i)}); err != nil {
			t.Fatal(err)
		}
		if err := room.React(fmt.Sprintf("v%d", i%40), "heart"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	busy := time.Since(start)
	deadline := time.Now().Add(2 * time.Second)
	for {
		w.mu.Lock()
		texts, hearts, sends := 0, 0, 0
		var countsAt []time.Time
		for i, m := range w.msgs {
			if m["type"] != "chat" && m["type"] != "reactions" {
				continue
			}
			sends++
			if ms, ok := m["messages"].([]any); ok {
				texts += len(ms)
			}
			c, _ := m["reactions"].(map[string]any)
			if m["type"] == "reactions" {
				c, _ = m["counts"].(map[string]any)
			}
			if c != nil {
				n, _ := c["heart"].(float64)
				hearts += int(n)
				countsAt = append(countsAt, w.at[i])
			}
		}
		w.mu.Unlock()
		if texts == posts && hearts == posts {
			// Sends: the first message and the first counts at once (the
			// room was quiet), then one per 125 ms, and the last chat and
			// counts after.
			if limit := int(busy/(125*time.Millisecond)) + 4; sends > limit {
				t.Errorf("%d sends in %s: more than one per 125 ms", sends, busy.Round(time.Millisecond))
			}
			for i := 1; i < len(countsAt); i++ {
				if gap := countsAt[i].Sub(countsAt[i-1]); gap < 245*time.Millisecond {
					t.Errorf("reaction counts %s apart, under 250 ms", gap)
				}
			}
			t.Logf("%d messages and %d taps in %s went out in %d sends, counts in %d of them", posts, posts, busy.Round(time.Millisecond), sends, len(countsAt))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 s: %d of %d messages, %d of %d taps", texts, posts, hearts, posts)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNames: validation, the change lock and the per-address budget of new
// identities.
func TestNames(t *testing.T) {
	_, names := openRoom(t)
	ctx := context.Background()
	for name, ok := range map[string]bool{"Ada": true, "  Ada   Lovelace ": true, "élodie_92": true, "a": false, "-ada": false,
		"ada<script>": false, "HOST": false, "Mod erator": false, "abcdefghijklmnopqrstuvwxy": false, "日本語": true} {
		_, _, err := chat.ValidName(name)
		if (err == nil) != ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", name, err, ok)
		}
	}
	for i := range 3 {
		if _, err := names.Set(ctx, fmt.Sprintf("v%d", i), "192.0.2.1", fmt.Sprintf("same address %d", i)); err != nil {
			t.Fatalf("new name %d from one address: %v", i, err)
		}
	}
	_, err := names.Set(ctx, "v3", "192.0.2.1", "one too many")
	if rf, ok := err.(*chat.Refusal); !ok || rf.Code != "rate_limited" || rf.RetryAfter <= 0 {
		t.Errorf("4th new identity from one address (limit 3): %v", err)
	}
	if _, err := names.Set(ctx, "v3", "192.0.2.2", "one too many"); err != nil {
		t.Errorf("another address: %v", err)
	}
	if _, err := names.Set(ctx, "v0", "192.0.2.1", "renamed"); err == nil || err.(*chat.Refusal).Code != "name_locked" {
		t.Errorf("rename right after the first name: %v", err)
	}
	if got, _ := names.Get(ctx, "v0"); got != "same address 0" {
		t.Errorf("name after a refused change: %q", got)
	}
	// Names already taken cost the address nothing: 5 tries, then the
	// budget of 3 is whole.
	for range 5 {
		if _, err := names.Set(ctx, "v21", "198.51.100.7", "same address 0"); err == nil || err.(*chat.Refusal).Code != "name_taken" {
			t.Fatalf("a taken name: %v", err)
		}
	}
	for i, v := range []string{"v21", "v22", "v23"} {
		if _, err := names.Set(ctx, v, "198.51.100.7", fmt.Sprintf("fresh %d", i)); err != nil {
			t.Errorf("new name %d after refused tries: %v", i, err)
		}
	}
}

func TestCleanText(t *testing.T) {
	for in, want := range map[string]string{
		"  hello\nworld\t!  ":     "hello world !",
		"a\u202Eevil\u202Cb":      "aevilb",
		"<b>bold</b> & \"quote\"": "<b>bold</b> & \"quote\"",
		"bell\x07":                "bell",
	} {
		got, err := chat.CleanText(in)
		if err != nil || got != want {
			t.Errorf("CleanText(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "   \n ", string(make([]rune, 301))} {
		if _, err := chat.CleanText(bad); err == nil {
			t.Errorf("CleanText(%q) accepted", bad)
		}
	}
}

// TestFilterWholeWords: listed words are masked whole, not inside others.
func TestFilterWholeWords(t *testing.T) {
	room, names := openRoom(t)
	ctx := context.Background()
	if _, err := names.Set(ctx, "v1", "10.0.0.1", "Ada"); err != nil {
		t.Fatal(err)
	}
	if _, err := room.Moderate(ctx, chat.RoleHost, chat.ActionRequest{Action: "filter", Words: []string{"ass", "Scam"}, Mode: chat.FilterMask}); err != nil {
		t.Fatal(err)
	}
	m, err := room.Post(ctx, chat.Post{Viewer: "v1", Text: "First class, no SCAM, no ass."})
	if err != nil {
		t.Fatal(err)
	}
	if m.Text != "First class, no ****, no ***." || m.Status != chat.StatusVisible {
		t.Errorf("masked: %q (%s)", m.Text, m.Status)
	}
	if _, err := room.Moderate(ctx, chat.RoleHost, chat.ActionRequest{Action: "filter", Words: []string{"two words"}, Mode: chat.FilterMask}); err == nil {
		t.Error("a filter word with a space was accepted")
	}
}

// FuzzCleanText: whatever a viewer types, a text taken is plain (no control
// or bidirectional override characters), at most MaxText characters, and
// cleaning it again changes nothing; names the same.
func FuzzCleanText(f *testing.F) {
	for _, s := range []string{"hello", " a\nb ", "\u202Eabc", "<b>x</b>", "\xff\xfe", "Ada Lovelace", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if out, err := chat.CleanText(in); err == nil {
			if n := utf8.RuneCountInString(out); n == 0 || n > chat.MaxText {
				t.Fatalf("%q: %d characters", out, n)
			}
			for _, r := range out {
				if unicode.IsControl(r) || (r >= 0x202A && r <= 0x202E) || (r >= 0x2066 && r <= 0x2069) || r == utf8.RuneError {
					t.Fatalf("%q keeps %U", out, r)
				}
			}
			if again, err := chat.CleanText(out); err != nil || again != out {
				t.Fatalf("cleaning %q again: %q, %v", out, again, err)
			}
		}
		if name, key, err := chat.ValidName(in); err == nil {
			if again, key2, err := chat.ValidName(name); err != nil || again != name || key2 != key {
				t.Fatalf("name %q again: %q %q, %v", name, again, key2, err)
			}
		}
	})
}
