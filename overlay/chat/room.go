package chat

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// Clock is the stream's media clock: the RTP timestamp of the newest video
// frame ingested (the overlay's Clock has it too).
type Clock interface {
	Latest() (uint32, bool)
}

// Config is what every room shares.
type Config struct {
	Store   Store
	Names   *Names
	Metrics *Metrics
	Log     *slog.Logger
	Now     func() time.Time
	// History is how many messages a late joiner gets.
	History int
	// BatchEvery: messages that come within it of the room's last send go
	// out together, so a busy chat costs each viewer a few sends per
	// second, not one per message. A quiet chat's message goes out at once.
	BatchEvery time.Duration
	// ReactEvery: reaction counts go out at most this often, in the chat
	// batch that goes then (sent early for them) or alone. It is a multiple
	// of BatchEvery so that under load the two coincide: a busy room costs
	// each viewer ReactEvery/BatchEvery sends per ReactEvery, not one more.
	ReactEvery time.Duration
	// SaveEvery: messages are written to the store in batches this often,
	// so that chat never queues one transaction per message in front of
	// the buys of a flash sale. A crash loses at most this much chat.
	SaveEvery time.Duration
	// Peers carries each room's events to the other nodes of a cluster,
	// whose rooms of the same stream Apply them; nil on a single node.
	Peers Peers
}

// Peers carries a room's events to the other nodes serving its stream.
type Peers interface {
	Share(stream string, ev Event)
}

// Event is what a room tells the rooms of its stream on other nodes: each
// node has its own room for its own viewers, the store holds what they
// share, and events keep them in step.
type Event struct {
	Messages  []Message      `json:"messages,omitempty"` // new visible messages
	Deleted   []string       `json:"deleted,omitempty"`
	Answered  string         `json:"answered,omitempty"`
	Rejected  string         `json:"rejected,omitempty"` // a held message
	Pin       *Message       `json:"pin,omitempty"`
	Unpin     bool           `json:"unpin,omitempty"`
	Reload    bool           `json:"reload,omitempty"` // settings or sanctions changed: read them again
	Reactions map[string]int `json:"reactions,omitempty"`
}

func (cfg Config) withDefaults() Config {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.History <= 0 {
		cfg.History = 50
	}
	if cfg.BatchEvery <= 0 {
		cfg.BatchEvery = 125 * time.Millisecond
	}
	if cfg.ReactEvery <= 0 {
		cfg.ReactEvery = 250 * time.Millisecond
	}
	if cfg.SaveEvery <= 0 {
		cfg.SaveEvery = 250 * time.Millisecond
	}
	return cfg
}

// Bounds of what a room holds in memory.
const (
	maxHeld    = 500    // held messages kept for moderators (older ones stay in the store)
	maxUnsaved = 10_000 // messages waiting for the store when it is down
	recentView = 500    // messages a moderator's view looks through
)

// ErrClosed: the room's stream was deleted.
var ErrClosed = errors.New("chat: the room is closed")

// Post is a message as the room receives it.
type Post struct {
	Viewer   string // the viewer's id; "" for the studio
	Role     string // RoleHost or RoleModerator for the studio, "" for viewers
	Text     string
	Question bool
}

// Room is the chat of one stream.
type Room struct {
	stream   string
	clock    Clock
	onScreen func() string // the SKU whose card is on screen, "" for none
	cfg      Config

	saveMu sync.Mutex // one writer of unsaved at a time

	mu         sync.Mutex
	state      RoomState
	recent     []Message // visible, oldest first, at most cfg.History
	held       []Message // waiting for approval, oldest first
	pinned     *Message
	subs       map[int]func([]byte)
	nextSub    int
	batch      []Message      // visible messages not sent yet
	reactions  map[string]int // taps here since the last counts, shared with the other nodes
	remote     map[string]int // taps on other nodes since the last counts
	lastSend   time.Time      // of a chat batch or counts
	lastCounts time.Time
	timer      *time.Timer // for the next send
	armedFor   time.Time   // when timer fires; zero when it is not armed
	unsaved    []Message
	viewers    map[string]*poster
	closed     bool
	stop       chan struct{}
	stopOnce   sync.Once
	done       chan struct{}
}

// poster is what a room tracks of one viewer's sending.
type poster struct {
	msgs     overlay.Bucket // 3 at once, then 1 per second
	taps     overlay.Bucket // 10 reactions per second
	lastPost time.Time
	seen     time.Time
}

// NewRoom opens a stream's room where the store left it: settings,
// sanctions, pinned message, the last messages and those held.
func NewRoom(ctx context.Context, stream string, clock Clock, onScreen func() string, cfg Config) (*Room, error) {
	cfg = cfg.withDefaults()
	r := &Room{stream: stream, clock: clock, onScreen: onScreen, cfg: cfg, subs: map[int]func([]byte){},
		viewers: map[string]*poster{}, reactions: map[string]int{}, remote: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	r.timer = time.AfterFunc(time.Hour, r.onTimer)
	r.timer.Stop()
	st, err := cfg.Store.ChatRoom(ctx, stream)
	if err != nil {
		return nil, err
	}
	r.state = st
	recent, err := cfg.Store.RecentChat(ctx, stream, recentView)
	if err != nil {
		return nil, err
	}
	for _, m := range recent {
		switch m.Status {
		case StatusVisible:
			r.recent = append(r.recent, m)
		case StatusHeld:
			r.held = append(r.held, m)
		}
	}
	r.recent = lastN(r.recent, cfg.History)
	r.held = lastN(r.held, maxHeld)
	if st.PinnedID != "" {
		m, err := cfg.Store.ChatMessage(ctx, stream, st.PinnedID)
		if err == nil && m.Status == StatusVisible {
			r.pinned = &m
		}
	}
	go r.loop()
	return r, nil
}

func lastN(ms []Message, n int) []Message {
	if len(ms) > n {
		return slices.Clone(ms[len(ms)-n:])
	}
	return ms
}

// Close stops the room's timers and writes what is left to the store.
func (r *Room) Close() {
	r.stopOnce.Do(func() {
		close(r.stop)
		<-r.done
		r.timer.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.save(ctx)
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
	})
}

// loop writes messages to the store and forgets viewers who went quiet.
func (r *Room) loop() {
	defer close(r.done)
	save := time.NewTicker(r.cfg.SaveEvery)
	defer save.Stop()
	tidy := time.NewTicker(time.Minute)
	defer tidy.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-save.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r.save(ctx)
			cancel()
		case now := <-tidy.C:
			r.mu.Lock()
			for id, p := range r.viewers {
				if now.Sub(p.seen) > time.Minute {
					delete(r.viewers, id)
				}
			}
			r.mu.Unlock()
		}
	}
}

// save writes the messages not stored yet. When the store fails they are
// kept (up to maxUnsaved) for the next try: chat goes on meanwhile.
func (r *Room) save(ctx context.Context) {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	ms := r.unsaved
	r.unsaved = nil
	r.mu.Unlock()
	if len(ms) == 0 {
		return
	}
	if err := r.cfg.Store.AddChatMessages(ctx, ms); err != nil {
		r.cfg.Log.Error("chat: store messages, trying again", "stream", r.stream, "messages", len(ms), "err", err)
		r.cfg.Metrics.saveErrors.Inc()
		r.mu.Lock()
		r.unsaved = append(ms, r.unsaved...)
		if over := len(r.unsaved) - maxUnsaved; over > 0 {
			r.unsaved = r.unsaved[over:]
			r.cfg.Metrics.refused.WithLabelValues("not_stored").Add(float64(over))
		}
		r.mu.Unlock()
	}
}

// snapshotMessage is a new subscriber's first chat message.
type snapshotMessage struct {
	V        int       `json:"v"`
	Type     string    `json:"type"`
	Messages []Message `json:"messages"`
	Pinned   *Message  `json:"pinned,omitempty"`
	SlowSec  int       `json:"slow_s"`
	You      *you      `json:"you,omitempty"`
}

type you struct {
	Name       string `json:"name,omitempty"`
	MutedUntil int64  `json:"muted_until_ms,omitempty"`
	Banned     bool   `json:"banned,omitempty"`
}

// Subscribe sends the chat snapshot at once (the last messages, the pinned
// one, slow mode, and for a viewer its name and sanctions), then every chat
// message until cancel. viewer is "" for SSE readers. send must not block.
func (r *Room) Subscribe(ctx context.Context, viewer string, send func([]byte)) (cancel func()) {
	var me *you
	if viewer != "" {
		name, err := r.cfg.Names.Get(ctx, viewer)
		if err != nil {
			r.cfg.Log.Warn("chat: read a viewer's name", "err", err)
		}
		me = &you{Name: name}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if me != nil {
		s := r.state.Sanctions[viewer]
		me.Banned = s.Banned
		if s.MutedUntil > r.cfg.Now().UnixMilli() {
			me.MutedUntil = s.MutedUntil
		}
	}
	// Messages still waiting in the batch come with it, not in the
	// snapshot as well: the new subscriber is subscribed before it goes.
	recent := slices.DeleteFunc(slices.Clone(r.recent), func(m Message) bool {
		return slices.ContainsFunc(r.batch, func(b Message) bool { return b.ID == m.ID })
	})
	snap := snapshotMessage{V: 1, Type: "chat.snapshot", Messages: public(recent), SlowSec: r.state.Settings.SlowSec, You: me}
	if r.pinned != nil {
		p := publicOne(*r.pinned)
		snap.Pinned = &p
	}
	b, _ := json.Marshal(snap)
	send(b)
	r.cfg.Metrics.deliveries.WithLabelValues("chat.snapshot").Inc()
	id := r.nextSub
	r.nextSub++
	r.subs[id] = send
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.subs, id)
	}
}

func publicOne(m Message) Message {
	m.Status = ""
	return m
}

func public(ms []Message) []Message {
	out := make([]Message, len(ms))
	for i, m := range ms {
		out[i] = publicOne(m)
	}
	return out
}

// Post takes a message from a viewer or the studio. It answers with the
// message as stored (Status visible or held) or a *Refusal.
func (r *Room) Post(ctx context.Context, p Post) (Message, error) {
	text, err := CleanText(p.Text)
	if err != nil {
		r.cfg.Metrics.refused.WithLabelValues("invalid").Inc()
		return Message{}, err
	}
	var name string
	switch p.Role {
	case RoleHost:
		name = "Host"
	case RoleModerator:
		name = "Moderator"
	default:
		if name, err = r.cfg.Names.Get(ctx, p.Viewer); err != nil {
			return Message{}, err
		}
		if name == "" {
			r.cfg.Metrics.refused.WithLabelValues("name_required").Inc()
			return Message{}, refuse("name_required", "pick a name before you chat")
		}
	}
	var sku string
	if p.Question && r.onScreen != nil {
		sku = r.onScreen()
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Message{}, ErrClosed
	}
	if p.Role == "" {
		if refusal := r.mayPost(p.Viewer, now); refusal != nil {
			r.cfg.Metrics.refused.WithLabelValues(refusal.Code).Inc()
			return Message{}, refusal
		}
	}
	m := Message{ID: "c" + strings.ToLower(rand.Text()), Stream: r.stream, Viewer: p.Viewer, Name: name, Role: p.Role,
		Question: p.Question, SKU: sku, TS: now.UnixMilli(), Status: StatusVisible}
	if at, ok := r.clock.Latest(); ok {
		m.At = &at
	}
	filter := r.state.Settings.Filter
	var hit bool
	m.Text, hit = filter.apply(text)
	if p.Role == "" && (r.state.Settings.Calm || (hit && filter.Mode == FilterHold)) {
		m.Status = StatusHeld
	}
	r.unsaved = append(r.unsaved, m)
	if m.Status == StatusHeld {
		r.held = lastN(append(r.held, m), maxHeld)
	} else {
		r.publish(m, now)
		r.share(Event{Messages: []Message{publicOne(m)}})
	}
	r.cfg.Metrics.messages.WithLabelValues(m.Status).Inc()
	return m, nil
}

// mayPost checks a viewer's sanctions, slow mode and rate; r.mu held.
func (r *Room) mayPost(viewer string, now time.Time) *Refusal {
	s := r.state.Sanctions[viewer]
	if s.Banned {
		return refuse("banned", "you are banned from this stream's chat")
	}
	if wait := time.UnixMilli(s.MutedUntil).Sub(now); s.MutedUntil > 0 && wait > 0 {
		rf := refuse("muted", "you are muted for %s", roundUp(wait))
		rf.RetryAfter = wait
		return rf
	}
	p := r.poster(viewer, now)
	if slow := time.Duration(r.state.Settings.SlowSec) * time.Second; slow > 0 && !p.lastPost.IsZero() {
		if wait := p.lastPost.Add(slow).Sub(now); wait > 0 {
			rf := refuse("slow_mode", "slow mode: one message every %d s; wait %s", r.state.Settings.SlowSec, roundUp(wait))
			rf.RetryAfter = wait
			return rf
		}
	}
	if wait := p.msgs.Take(now); wait > 0 {
		rf := refuse("rate_limited", "too many messages; slow down")
		rf.RetryAfter = wait
		return rf
	}
	p.lastPost = now
	return nil
}

func roundUp(d time.Duration) string {
	if d > time.Minute {
		return (d + time.Minute - 1).Truncate(time.Minute).String()
	}
	return (d + time.Second - 1).Truncate(time.Second).String()
}

// poster returns what the room tracks of a viewer; r.mu held.
func (r *Room) poster(viewer string, now time.Time) *poster {
	p, ok := r.viewers[viewer]
	if !ok {
		p = &poster{msgs: overlay.Bucket{Rate: 1, Burst: 3}, taps: overlay.Bucket{Rate: 10, Burst: 10}}
		r.viewers[viewer] = p
	}
	p.seen = now
	return p
}

// publish queues a visible message for every subscriber; r.mu held.
func (r *Room) publish(m Message, now time.Time) {
	r.recent = append(r.recent, m)
	if len(r.recent) > r.cfg.History {
		r.recent = slices.Clone(r.recent[len(r.recent)-r.cfg.History:])
	}
	r.batch = append(r.batch, m)
	r.schedule(now)
}

// Sending. What waits (chat messages, reaction counts) goes out in one
// message when the first of them is due: messages BatchEvery after the
// room's last send, counts ReactEvery after the last counts. Counts that
// are due take the waiting messages with them; messages that are due go
// alone when the counts are not.

// nextSend is when something waiting is due; false when nothing waits.
// r.mu held.
func (r *Room) nextSend() (time.Time, bool) {
	var due time.Time
	waiting := false
	if len(r.batch) > 0 {
		due, waiting = r.lastSend.Add(r.cfg.BatchEvery), true
	}
	if len(r.reactions) > 0 || len(r.remote) > 0 {
		if c := r.lastCounts.Add(r.cfg.ReactEvery); !waiting || c.Before(due) {
			due, waiting = c, true
		}
	}
	return due, waiting
}

// schedule sends what is due and arms the timer for what waits; r.mu held.
func (r *Room) schedule(now time.Time) {
	due, waiting := r.nextSend()
	if waiting && !due.After(now) {
		r.flush(now)
		due, waiting = r.nextSend()
	}
	if !waiting || r.closed || (!r.armedFor.IsZero() && !r.armedFor.After(due)) {
		return
	}
	r.armedFor = due
	r.timer.Reset(due.Sub(now))
}

func (r *Room) onTimer() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armedFor = time.Time{}
	r.schedule(r.cfg.Now())
}

// flush sends the waiting messages, with the counts if they are due, in
// one `chat`, or the counts alone in `reactions`; r.mu held.
func (r *Room) flush(now time.Time) {
	var counts map[string]int
	if (len(r.reactions) > 0 || len(r.remote) > 0) && !now.Before(r.lastCounts.Add(r.cfg.ReactEvery)) {
		counts = r.takeCounts()
		r.lastCounts = now
	}
	switch {
	case len(r.batch) > 0:
		b, _ := json.Marshal(struct {
			V         int            `json:"v"`
			Type      string         `json:"type"`
			Messages  []Message      `json:"messages"`
			Reactions map[string]int `json:"reactions,omitempty"`
		}{1, "chat", public(r.batch), counts})
		r.send("chat", b)
		done := r.cfg.Now().UnixMilli()
		for _, m := range r.batch {
			r.cfg.Metrics.handOff.Observe(float64(max(done-m.TS, 0)) / 1000)
		}
		r.batch = nil
	case counts != nil:
		b, _ := json.Marshal(struct {
			V      int            `json:"v"`
			Type   string         `json:"type"`
			Counts map[string]int `json:"counts"`
		}{1, "reactions", counts})
		r.send("reactions", b)
	default:
		return
	}
	r.lastSend = now
}

// takeCounts returns the taps counted here and on other nodes since the
// last counts, and shares this node's with the others; r.mu held.
func (r *Room) takeCounts() map[string]int {
	counts := maps.Clone(r.reactions)
	for k, n := range r.remote {
		counts[k] += n
	}
	if len(r.reactions) > 0 {
		r.share(Event{Reactions: r.reactions})
	}
	r.reactions, r.remote = map[string]int{}, map[string]int{}
	return counts
}

// broadcast sends a message to every subscriber after the queued chat, so
// that viewers hear of a message before what happens to it; r.mu held.
func (r *Room) broadcast(v any, kind string) {
	r.flush(r.cfg.Now())
	b, err := json.Marshal(v)
	if err != nil {
		r.cfg.Log.Error("chat: marshal", "err", err)
		return
	}
	r.send(kind, b)
}

func (r *Room) send(kind string, b []byte) {
	for _, send := range r.subs {
		send(b)
	}
	r.cfg.Metrics.deliveries.WithLabelValues(kind).Add(float64(len(r.subs)))
}

// React counts a viewer's tap. Taps past 10 per second per viewer, and a
// banned viewer's, are dropped without a word: a reaction is worth less
// than its answer.
func (r *Room) React(viewer, value string) error {
	if !ValidReaction(value) {
		return refuse("invalid", "a reaction is one of %s", strings.Join(Reactions, ", "))
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state.Sanctions[viewer].Banned || r.poster(viewer, now).taps.Take(now) > 0 {
		r.cfg.Metrics.refused.WithLabelValues("reaction_dropped").Inc()
		return nil
	}
	r.reactions[value]++
	r.cfg.Metrics.reactions.Inc()
	r.schedule(now)
	return nil
}

// share tells the other nodes' rooms of an event; r.mu held.
func (r *Room) share(ev Event) {
	if r.cfg.Peers != nil {
		r.cfg.Peers.Share(r.stream, ev)
	}
}

// Apply takes an event of this stream's room on another node: its viewers'
// new messages, what its moderators did, its viewers' taps.
func (r *Room) Apply(ctx context.Context, ev Event) {
	var st *RoomState
	if ev.Reload {
		s, err := r.cfg.Store.ChatRoom(ctx, r.stream)
		if err != nil {
			r.cfg.Log.Error("chat: reload the room after another node's moderation", "stream", r.stream, "err", err)
		} else {
			st = &s
		}
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range ev.Messages {
		m.Stream, m.Status = r.stream, StatusVisible
		r.publish(m, now)
	}
	if len(ev.Deleted) > 0 {
		for _, id := range ev.Deleted {
			r.forget(id)
		}
		r.broadcast(idsMessage{V: 1, Type: "chat.delete", IDs: ev.Deleted}, "chat.delete")
	}
	if ev.Answered != "" {
		for i := range r.recent {
			if r.recent[i].ID == ev.Answered {
				r.recent[i].Answered = true
			}
		}
		r.broadcast(idMessage{V: 1, Type: "chat.answered", ID: ev.Answered}, "chat.answered")
	}
	if ev.Rejected != "" {
		r.held = slices.DeleteFunc(r.held, func(h Message) bool { return h.ID == ev.Rejected })
		r.broadcast(idMessage{V: 1, Type: "chat.rejected", ID: ev.Rejected}, "chat.rejected")
	}
	if ev.Pin != nil || ev.Unpin {
		msg := pinMessage{V: 1, Type: "chat.pin", Message: ev.Pin}
		r.pinned = ev.Pin
		r.broadcast(msg, "chat.pin")
	}
	if st != nil {
		r.setState(*st)
	}
	for k, n := range ev.Reactions {
		if ValidReaction(k) && n > 0 {
			r.remote[k] += n
		}
	}
	r.schedule(now)
}

// setState takes a room state written by a moderation and tells viewers
// of a new slow mode; r.mu held.
func (r *Room) setState(st RoomState) {
	slowChanged := st.Settings.SlowSec != r.state.Settings.SlowSec
	r.state = st
	if slowChanged {
		r.broadcast(struct {
			V       int    `json:"v"`
			Type    string `json:"type"`
			SlowSec int    `json:"slow_s"`
		}{1, "chat.settings", st.Settings.SlowSec}, "chat.settings")
	}
}

// Banned reports whether a viewer is banned here (from chat and buying).
func (r *Room) Banned(viewer string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state.Sanctions[viewer].Banned
}

// NewModeratorKey makes the room's moderator key; the previous one stops
// working. Only its hash is stored.
func (r *Room) NewModeratorKey(ctx context.Context, by string) (string, error) {
	key := "mod_" + rand.Text()
	r.mu.Lock()
	defer r.mu.Unlock()
	next := r.state.clone()
	next.ModeratorKeyHash = hashKey(key)
	if err := r.cfg.Store.SaveChatRoom(ctx, r.stream, next, nil, Action{At: r.cfg.Now(), By: by, Action: "moderator_key"}); err != nil {
		return "", err
	}
	r.state = next
	r.share(Event{Reload: true})
	r.cfg.Metrics.moderation.WithLabelValues("moderator_key").Inc()
	return key, nil
}

// CheckModeratorKey reports whether key is the room's moderator key.
func (r *Room) CheckModeratorKey(key string) bool {
	r.mu.Lock()
	h := r.state.ModeratorKeyHash
	r.mu.Unlock()
	return h != "" && subtle.ConstantTimeCompare([]byte(h), []byte(hashKey(key))) == 1
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func (st RoomState) clone() RoomState {
	st.Sanctions = maps.Clone(st.Sanctions)
	if st.Sanctions == nil {
		st.Sanctions = map[string]Sanction{}
	}
	st.Settings.Filter.Words = slices.Clone(st.Settings.Filter.Words)
	return st
}
