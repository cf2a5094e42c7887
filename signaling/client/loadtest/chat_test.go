package loadtest

import (
	"fmt"
	"testing"
	"time"
)

func TestChatText(t *testing.T) {
	c := newChatRun()
	seq, sent, ok := c.parse(c.text(42, 123456789))
	if !ok || seq != 42 || sent != 123456789 {
		t.Fatalf("parsed %d %d %v", seq, sent, ok)
	}
	other := newChatRun()
	for c.tag == other.tag {
		other = newChatRun()
	}
	for _, text := range []string{other.text(1, 2), "hello", c.prefix + "x 1", c.prefix + "1", c.prefix + "-1 5", c.prefix + "99999999 5"} {
		if _, _, ok := c.parse(text); ok {
			t.Errorf("%q taken for one of this run's messages", text)
		}
	}
}

// TestChatMessages feeds a viewer the server's messages: the snapshot, a
// batch repeating one of its messages, answers to a chatter, reactions.
func TestChatMessages(t *testing.T) {
	r := &run{start: time.Now(), chat: newChatRun()}
	c := r.chat
	v := &viewer{id: 3, run: r}
	v.chat.chatter, v.chat.named = true, make(chan struct{})
	var out []string
	v.setChannel(func(b []byte) error { out = append(out, string(b)); return nil })
	c.add(3, 0)
	c.add(3, 0)
	c.add(3, 0)

	v.chatMessage(fmt.Appendf(nil, `{"v":1,"type":"chat.snapshot","messages":[{"id":"a","text":%q},{"id":"x","text":"hi"}],"slow_s":0}`, c.text(0, 0)), 10)
	if len(out) != 1 || out[0] != fmt.Sprintf(`{"name":"load-%s-3","type":"chat.name","v":1}`, c.tag) {
		t.Fatalf("the chatter sent %q on its snapshot", out)
	}
	v.chatMessage([]byte(`{"v":1,"type":"chat.name.result","name":"x"}`), 11)
	select {
	case <-v.chat.named:
	default:
		t.Fatal("the name result did not end the chatter's wait")
	}
	v.chatMessage(fmt.Appendf(nil, `{"v":1,"type":"chat","messages":[{"text":%q},{"text":%q}]}`, c.text(0, 0), c.text(1, int64(5*time.Millisecond))), int64(25*time.Millisecond))
	v.chatMessage([]byte(`{"v":1,"type":"chat.result","key":"1","id":"c1","status":"visible"}`), 30)
	v.chatMessage([]byte(`{"v":1,"type":"error","key":"2","code":"rate_limited","retry_after_ms":300}`), 31)
	v.chatMessage([]byte(`{"v":1,"type":"reactions","counts":{"heart":3,"wow":2}}`), 40)
	// A batch as the server writes it, counts riding along.
	v.chatMessage(fmt.Appendf(nil, `{"v":1,"type":"chat","messages":[{"id":"c9","name":"Ada","text":"hello \"vitrine-load\" %s","ts":1},{"id":"c10","name":"Bo","text":%q,"at":90,"ts":2}],"reactions":{"fire":4}}`, c.prefix, c.text(3, int64(10*time.Millisecond))), int64(40*time.Millisecond))
	vc := &v.chat
	if vc.snapshotAt != 10 || vc.name != nameTaken || !vc.has(0) || !vc.has(1) || vc.has(2) || !vc.has(3) || vc.dups != 1 {
		t.Errorf("snapshot at %d, name %d, has 0 1 2 3: %v %v %v %v, dups %d", vc.snapshotAt, vc.name, vc.has(0), vc.has(1), vc.has(2), vc.has(3), vc.dups)
	}
	if s := vc.lat.spread(); s.N != 2 || s.Max != 30 {
		t.Errorf("latency %+v: want samples of 20 and 30 ms (the repeat is not one)", s)
	}
	if c.msgs[0].status != "" || c.msgs[1].status != "visible" || c.msgs[2].status != "rate_limited" {
		t.Errorf("statuses %+v", c.msgs)
	}
	if vc.reactMsgs != 2 || vc.taps != 9 {
		t.Errorf("%d reactions messages, %d taps", vc.reactMsgs, vc.taps)
	}
}

// TestChatExpected checks which messages each viewer is expected to get:
// visible ones written after its snapshot came, up to chatGrace before its
// channel ended on its own.
func TestChatExpected(t *testing.T) {
	s := int64(time.Second)
	r := &run{cfg: Config{Chatters: 1, ChatEvery: time.Second, Reactions: 10}, chat: newChatRun()}
	c := r.chat
	c.start, c.stop = 0, 10*s
	for i, m := range []chatMsg{
		{sent: 1 * s, status: "visible"},
		{sent: 2 * s, status: "held"},
		{sent: 3 * s, status: "visible"},
		{sent: 4 * s, status: "rate_limited"},
		{sent: 5 * s, status: "visible"},
		{sent: 9 * s, status: ""},
	} {
		m.from = i
		c.msgs = append(c.msgs, m)
	}
	c.reactTried.Store(100)
	viewer := func(snapshot, end int64, base, taps uint64, got ...int) *viewer {
		v := &viewer{id: len(r.viewers), run: r}
		v.state.Store(joinOK)
		v.chat.snapshotAt, v.chat.endAt, v.chat.reactBase, v.chat.taps = snapshot, end, base, taps
		for _, g := range got {
			v.chat.mark(g)
		}
		r.viewers = append(r.viewers, v)
		return v
	}
	viewer(s/2, 0, 0, 100, 0, 2, 4) // all three
	viewer(5*s/2, 0, 40, 50, 0, 4)  // message 0 was before its snapshot; 2 is missing; 10 taps short
	viewer(s/2, 11*s/2, 0, 10, 0)   // ended at 5.5 s: 4 is in the grace; 2 is missing
	viewer(0, 0, 0, 0)              // no snapshot
	rep := &Report{Viewers: make([]ViewerReport, len(r.viewers))}
	r.reportChat(rep)

	for i, want := range []struct{ expected, missing uint64 }{{3, 0}, {2, 1}, {2, 1}, {0, 0}} {
		if got := rep.Viewers[i]; got.ChatExpected != want.expected || got.ChatMissing != want.missing {
			t.Errorf("viewer %d: expected %d missing %d, want %d and %d", i, got.ChatExpected, got.ChatMissing, want.expected, want.missing)
		}
	}
	ch := rep.Chat
	if ch.Sent != 6 || ch.Visible != 3 || ch.Held != 1 || ch.Refused["rate_limited"] != 1 || ch.Unconfirmed != 1 {
		t.Errorf("sent %d, visible %d, held %d, refused %v, unanswered %d", ch.Sent, ch.Visible, ch.Held, ch.Refused, ch.Unconfirmed)
	}
	if ch.Viewers != 3 || ch.NoSnapshot != 1 || ch.Disconnected != 1 || ch.Expected != 7 || ch.Received != 5 || ch.Missing != 2 || ch.ViewersMissing != 2 {
		t.Errorf("%+v", ch)
	}
	re := rep.Reactions
	if re.Sent != 100 || re.ViewersShort != 1 || rep.Viewers[1].ReactionTapsExpected != 60 || rep.Viewers[2].ReactionTapsExpected != 0 {
		t.Errorf("reactions %+v, viewer 1 expected %d taps, viewer 2 (disconnected) %d", re, rep.Viewers[1].ReactionTapsExpected, rep.Viewers[2].ReactionTapsExpected)
	}
}
