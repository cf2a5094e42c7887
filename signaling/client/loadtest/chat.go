package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Chat and reactions (Config.Chatters, Config.Reactions), measured from the
// viewers' side. Chatters set a name when their chat snapshot arrives, then
// during the measured window post messages whose text carries this run's
// tag, a sequence number and the send time; every viewer notes which of
// them it got and how long each took. Reactions go round-robin over the
// viewers with a chat snapshot, at a total rate.
//
// Which messages a viewer is expected to get: those the server accepted as
// visible (the chatter's chat.result) that were written after the viewer's
// chat.snapshot arrived. The server registers a subscriber in the same step
// as it sends the snapshot, so a message written after the snapshot arrived
// reached the server after the viewer was subscribed: it must come in a
// chat batch. Messages written earlier may come in the snapshot, a batch,
// both or neither, and are not counted either way. For a viewer whose data
// channel ended before the tool closed it, messages written in the last
// chatGrace before the end are not expected either (they may have been on
// their way); it is reported as disconnected.

const (
	// chatDrain is how long the viewers stay after the last message and
	// tap, so that what is in flight arrives: well past the server's 100 ms
	// chat batches and 250 ms reaction counts.
	chatDrain = time.Second
	// chatGrace: see above.
	chatGrace = int64(time.Second)
	// MaxReactionsPerViewer is the server's limit: taps past 10 per second
	// per viewer are dropped.
	MaxReactionsPerViewer = 10
)

// reactionValues are the taps the server takes; the tool cycles through them.
var reactionValues = [...]string{"heart", "fire", "clap", "laugh", "wow"}

// chatRun is the run's chat: what was posted and tapped.
type chatRun struct {
	// tag is in every name and text of this run: the server keeps names
	// and the last messages across runs, and a viewer must not take an
	// earlier run's message for one of this run's.
	tag    string
	prefix string // "vitrine-load <tag> "

	mu          sync.Mutex
	msgs        []chatMsg // by sequence number
	start, stop int64     // ns since run start: sending began, ended

	reactTried  atomic.Uint64 // taps about to be written (counted before the write)
	reactFailed atomic.Uint64 // of those, writes that failed
}

// chatMsg is one message a chatter posted.
type chatMsg struct {
	from   int    // the chatter's viewer id
	sent   int64  // ns since run start, just before the write
	status string // "": no answer yet; visible, held; an error code; statusUnsent
}

// statusUnsent: the write to the data channel failed.
const statusUnsent = "unsent"

func newChatRun() *chatRun {
	tag := randomToken(4)
	return &chatRun{tag: tag, prefix: "vitrine-load " + tag + " "}
}

// add records a message about to be written and returns its sequence number.
func (c *chatRun) add(from int, sent int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, chatMsg{from: from, sent: sent})
	return len(c.msgs) - 1
}

func (c *chatRun) setStatus(seq int, status string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq >= 0 && seq < len(c.msgs) {
		c.msgs[seq].status = status
	}
}

func (c *chatRun) sent() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// text is a message's text: the run's tag, its sequence number, its send
// time (ns since run start: every viewer runs in this process, on this
// clock).
func (c *chatRun) text(seq int, sent int64) string {
	return c.prefix + strconv.Itoa(seq) + " " + strconv.FormatInt(sent, 10)
}

// parse reads a text back; ok is false for a message that is not this
// run's.
func (c *chatRun) parse(text string) (seq int, sent int64, ok bool) {
	rest, ok := strings.CutPrefix(text, c.prefix)
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, 0, false
	}
	n, err1 := strconv.Atoi(a)
	t, err2 := strconv.ParseInt(b, 10, 64)
	// The bound keeps a mangled text from growing a viewer's bit set.
	if err1 != nil || err2 != nil || n < 0 || n >= 1<<24 {
		return 0, 0, false
	}
	return n, t, true
}

// Name states of a chatter.
const (
	nameNone = iota
	nameAsked
	nameTaken
	nameRefused
)

// viewerChat is one viewer's side of the chat. The data channel's reader
// writes it; the chatter and reaction goroutines read the channel's send
// function; the report reads it all after the viewers are closed. A mutex
// covers it all: a pion viewer's callbacks are not waited for on close.
type viewerChat struct {
	chatter bool          // set before the viewer joins
	named   chan struct{} // chatters: closed when the name is taken or refused

	mu         sync.Mutex
	send       func([]byte) error // the data channel, once open
	name       int                // nameNone...
	nameCode   string             // why the name was refused
	snapshotAt int64              // ns since run start; 0: no chat.snapshot yet
	reactBase  uint64             // taps tried when the snapshot came
	endAt      int64              // the channel ended on its own then; 0: it did not
	got        []uint64           // bit seq: this run's message seq arrived (snapshot or batch)
	dups       uint64             // messages of this run that came again
	lat        histogram          // text's send time to arrival, for messages in chat batches
	reactMsgs  uint64             // messages carrying reaction counts
	sends      uint64             // chat and reactions messages
	taps       uint64             // the taps they counted
}

func (vc *viewerChat) has(seq int) bool {
	return seq/64 < len(vc.got) && vc.got[seq/64]&(1<<(seq%64)) != 0
}

// mark notes seq as arrived; false if it already had.
func (vc *viewerChat) mark(seq int) bool {
	if vc.has(seq) {
		return false
	}
	for seq/64 >= len(vc.got) {
		vc.got = append(vc.got, 0)
	}
	vc.got[seq/64] |= 1 << (seq % 64)
	return true
}

// setChannel gives the viewer's data channel to the chat.
func (v *viewer) setChannel(send func([]byte) error) {
	v.chat.mu.Lock()
	v.chat.send = send
	v.chat.mu.Unlock()
}

// channelEnded notes that the viewer's data channel ended. When the tool
// did not close it, that is a disconnect.
func (v *viewer) channelEnded(at int64) {
	v.mu.Lock()
	closed := v.closed
	v.mu.Unlock()
	if closed {
		return
	}
	v.chat.mu.Lock()
	if v.chat.endAt == 0 {
		v.chat.endAt = at
	}
	v.chat.mu.Unlock()
}

// channelMessage is one message on a viewer's data channel, arrived at at:
// counted, timed if it is a cue, and read for chat when the run chats.
func (v *viewer) channelMessage(msg []byte, at int64) {
	v.overlay.Add(1)
	if v.run.cueLag(msg, at) || v.run.chat == nil {
		return
	}
	v.chatMessage(msg, at)
}

// chatIn is what the tool reads of the server's chat messages.
type chatIn struct {
	Type     string `json:"type"`
	Messages []struct {
		Text string `json:"text"`
	} `json:"messages"`
	Counts map[string]int `json:"counts"`
	Key    string         `json:"key"`
	Status string         `json:"status"`
	Code   string         `json:"code"`
}

func (v *viewer) chatMessage(msg []byte, at int64) {
	// Most messages are not chat; a look for the type is cheaper than a
	// decode.
	if !bytes.Contains(msg, []byte(`"type":"chat`)) && !bytes.Contains(msg, []byte(`"type":"reactions"`)) &&
		!bytes.Contains(msg, []byte(`"type":"error"`)) {
		return
	}
	if bytes.HasPrefix(msg, chatBatchStart) {
		v.chatBatch(msg, at)
		return
	}
	var m chatIn
	if json.Unmarshal(msg, &m) != nil {
		return
	}
	c, vc := v.run.chat, &v.chat
	switch m.Type {
	case "chat.snapshot":
		vc.mu.Lock()
		if vc.snapshotAt == 0 {
			vc.snapshotAt = at
			vc.reactBase = c.reactTried.Load()
		}
		for _, cm := range m.Messages {
			if seq, _, ok := c.parse(cm.Text); ok && !vc.mark(seq) {
				vc.dups++
			}
		}
		ask := vc.chatter && vc.name == nameNone && vc.send != nil
		if ask {
			vc.name = nameAsked
		}
		send := vc.send
		vc.mu.Unlock()
		if ask {
			// Unique server-wide and across runs: the tag.
			b, _ := json.Marshal(map[string]any{"v": 1, "type": "chat.name", "name": "load-" + c.tag + "-" + strconv.Itoa(v.id)})
			if err := send(b); err != nil {
				vc.nameDone(nameRefused, statusUnsent)
			}
		}
	case "chat.result":
		if seq, err := strconv.Atoi(m.Key); err == nil {
			c.setStatus(seq, m.Status)
		}
	case "chat.name.result":
		vc.nameDone(nameTaken, "")
	case "reactions":
		vc.mu.Lock()
		vc.sends++
		vc.mu.Unlock()
		vc.counted(m.Counts)
	case "error":
		// A refused chat message carries its key; a refused name none.
		if seq, err := strconv.Atoi(m.Key); err == nil {
			c.setStatus(seq, m.Code)
		} else if m.Key == "" {
			vc.nameDone(nameRefused, m.Code)
		}
	}
}

// chatBatchStart is how the server's `chat` batches begin.
var chatBatchStart = []byte(`{"v":1,"type":"chat","messages":`)

// chatBatch reads a `chat` batch without decoding it: every viewer gets
// every batch, and a full decode of each was a tenth of the tool's CPU,
// taken from the receivers the latency is measured at. The run's texts
// are ASCII, which JSON leaves as they are: `"text":"<prefix><seq> <sent>"`.
func (v *viewer) chatBatch(msg []byte, at int64) {
	c, vc := v.run.chat, &v.chat
	marker := []byte(`"text":"` + c.prefix)
	vc.mu.Lock()
	vc.sends++
	for rest := msg; ; {
		i := bytes.Index(rest, marker)
		if i < 0 {
			break
		}
		rest = rest[i+len(`"text":"`):]
		end := bytes.IndexByte(rest, '"')
		if end < 0 {
			break
		}
		seq, sent, ok := c.parse(string(rest[:end]))
		rest = rest[end:]
		if !ok {
			continue
		}
		if !vc.mark(seq) {
			vc.dups++
			continue
		}
		vc.lat.add(at - sent)
	}
	vc.mu.Unlock()
	if i := bytes.LastIndex(msg, []byte(`],"reactions":`)); i >= 0 {
		var counts map[string]int
		if json.Unmarshal(msg[i+len(`],"reactions":`):len(msg)-1], &counts) == nil {
			vc.counted(counts)
		}
	}
}

// counted adds one message's reaction counts.
func (vc *viewerChat) counted(counts map[string]int) {
	var n uint64
	for _, k := range counts {
		n += uint64(max(k, 0))
	}
	vc.mu.Lock()
	vc.reactMsgs++
	vc.taps += n
	vc.mu.Unlock()
}

// nameDone ends a chatter's wait for its name, once.
func (vc *viewerChat) nameDone(state int, code string) {
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if !vc.chatter || vc.name != nameAsked {
		return
	}
	vc.name, vc.nameCode = state, code
	close(vc.named)
}

// startChat starts the chatters and the reactions, until ctx ends.
func (r *run) startChat(ctx context.Context, wg *sync.WaitGroup) {
	c := r.chat
	c.mu.Lock()
	c.start = r.now()
	c.mu.Unlock()
	if r.cfg.Chatters > 0 {
		for _, v := range r.viewersSoFar() {
			if v.chat.chatter {
				wg.Go(func() { r.chatter(ctx, v) })
			}
		}
	}
	if r.cfg.Reactions > 0 {
		wg.Go(func() { r.react(ctx) })
	}
}

// stopChat notes when sending ended; call it once the goroutines did.
func (r *run) stopChat() {
	r.chat.mu.Lock()
	r.chat.stop = r.now()
	r.chat.mu.Unlock()
}

// chatter posts one message every Config.ChatEvery once its name is taken.
func (r *run) chatter(ctx context.Context, v *viewer) {
	vc := &v.chat
	select {
	case <-ctx.Done():
		return
	case <-vc.named:
	}
	vc.mu.Lock()
	ok, send := vc.name == nameTaken, vc.send
	vc.mu.Unlock()
	if !ok {
		return
	}
	// A random first wait spreads the chatters over the interval, as
	// people are, instead of all posting on one tick.
	every := r.cfg.ChatEvery
	first := time.NewTimer(rand.N(every))
	defer first.Stop()
	select {
	case <-ctx.Done():
		return
	case <-first.C:
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		sent := r.now()
		seq := r.chat.add(v.id, sent)
		b, _ := json.Marshal(map[string]any{"v": 1, "type": "chat", "text": r.chat.text(seq, sent), "key": strconv.Itoa(seq)})
		if err := send(b); err != nil {
			r.chat.setStatus(seq, statusUnsent)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// react taps at Config.Reactions per second in total, each tap on the next
// viewer (round-robin) whose chat snapshot came and whose channel is open:
// every viewer gets an even share, under the server's per-viewer limit
// when there are enough of them.
func (r *run) react(ctx context.Context) {
	var msgs [len(reactionValues)][]byte
	for i, val := range reactionValues {
		msgs[i], _ = json.Marshal(map[string]any{"v": 1, "type": "react", "value": val})
	}
	c := r.chat
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var due uint64 // taps scheduled so far
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		viewers := r.viewersSoFar()
		for target := uint64(r.cfg.Reactions * time.Since(start).Seconds()); due < target; due++ {
			send := nextTapper(viewers, &next)
			if send == nil {
				// Nobody to tap: the schedule moves on, so the rate
				// does not burst when viewers come.
				due = target
				break
			}
			c.reactTried.Add(1)
			if err := send(msgs[due%uint64(len(msgs))]); err != nil {
				c.reactFailed.Add(1)
			}
		}
	}
}

// nextTapper returns the send function of the next viewer from *next on
// that can tap, and moves *next past it; nil when none can.
func nextTapper(viewers []*viewer, next *int) func([]byte) error {
	for range viewers {
		v := viewers[*next%len(viewers)]
		*next = (*next + 1) % len(viewers)
		v.chat.mu.Lock()
		send := v.chat.send
		if v.chat.snapshotAt == 0 || v.chat.endAt != 0 {
			send = nil
		}
		v.chat.mu.Unlock()
		if send != nil {
			return send
		}
	}
	return nil
}

// reportChat adds the chat and reactions to a report whose Viewers are
// r.viewers in order. Call it after the viewers are closed.
func (r *run) reportChat(rep *Report) {
	c := r.chat
	c.mu.Lock()
	msgs := c.msgs
	start, stop := c.start, c.stop
	c.mu.Unlock()
	window := float64(stop-start) / float64(time.Second)

	ch := &Chat{Chatters: r.cfg.Chatters, Every: r.cfg.ChatEvery.Seconds(), Sent: len(msgs), Seconds: window,
		NamesRefused: map[string]int{}, Refused: map[string]int{}}
	for _, m := range msgs {
		switch m.status {
		case "visible":
			ch.Visible++
		case "held":
			ch.Held++
		case "":
			ch.Unconfirmed++
		default:
			ch.Refused[m.status]++
		}
	}
	react := &Reactions{Rate: r.cfg.Reactions, Sent: c.reactTried.Load() - c.reactFailed.Load(), Failed: c.reactFailed.Load(), Seconds: window}
	var lat histogram
	var perSecond, taps, sends []float64
	tried := c.reactTried.Load()
	for i, v := range r.viewers {
		vr := &rep.Viewers[i]
		vc := &v.chat
		vc.mu.Lock()
		switch vc.name {
		case nameTaken:
			ch.Named++
		case nameRefused:
			ch.NamesRefused[vc.nameCode]++
		}
		switch {
		case !vc.chatter || vc.name == nameTaken:
		case vc.name == nameNone:
			ch.Unnamed++
			ch.NamesRefused["not_asked"]++ // no chat snapshot, or no channel to ask on
		case vc.name == nameAsked:
			ch.Unnamed++
			ch.NamesRefused["unanswered"]++
		default:
			ch.Unnamed++
		}
		if vc.snapshotAt == 0 {
			if v.state.Load() == joinOK {
				ch.NoSnapshot++
			}
			vc.mu.Unlock()
			continue
		}
		ch.Viewers++
		vr.ChatSubscribed = true
		end := int64(math.MaxInt64)
		if vc.endAt != 0 {
			ch.Disconnected++
			vr.ChatDisconnected = true
			end = vc.endAt - chatGrace
		}
		for seq, m := range msgs {
			if m.status != "visible" || m.sent <= vc.snapshotAt || m.sent > end {
				continue
			}
			vr.ChatExpected++
			if !vc.has(seq) {
				vr.ChatMissing++
			}
		}
		vr.ChatDuplicates = vc.dups
		lat.merge(&vc.lat)
		vr.Reactions, vr.ReactionTaps = vc.reactMsgs, vc.taps
		if vc.endAt == 0 {
			// Taps tried after the snapshot came, less the writes
			// that failed (of any viewer's: the count cannot tell).
			vr.ReactionTapsExpected = tried - vc.reactBase - min(c.reactFailed.Load(), tried-vc.reactBase)
			if vr.ReactionTaps < vr.ReactionTapsExpected {
				react.ViewersShort++
			}
		}
		// Per second of sending the viewer was there for.
		if d := float64(stop-max(start, vc.snapshotAt)) / float64(time.Second); d > 0 {
			sends = append(sends, float64(vc.sends)/d)
			if r.cfg.Reactions > 0 {
				perSecond = append(perSecond, float64(vc.reactMsgs)/d)
			}
		}
		if r.cfg.Reactions > 0 {
			taps = append(taps, float64(vc.taps))
		}
		vc.mu.Unlock()
		ch.Expected += vr.ChatExpected
		ch.Missing += vr.ChatMissing
		ch.Duplicates += vr.ChatDuplicates
		if vr.ChatMissing > 0 {
			ch.ViewersMissing++
		}
	}
	ch.Received = ch.Expected - ch.Missing
	ch.Latency = lat.spread()
	ch.SendsPerViewerPerSecond = spreadOf(sends)
	react.PerViewerPerSecond = spreadOf(perSecond)
	react.Taps = spreadOf(taps)
	if r.cfg.Chatters > 0 {
		rep.Chat = ch
	}
	if r.cfg.Reactions > 0 {
		rep.Reactions = react
	}
}

// refusals writes counts by code, most first: "rate_limited 3, held 1".
func refusals(m map[string]int) string {
	codes := slices.Collect(maps.Keys(m))
	slices.SortFunc(codes, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var b strings.Builder
	for i, k := range codes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k + " " + strconv.Itoa(m[k]))
	}
	return b.String()
}
