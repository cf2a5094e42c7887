package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay/chat"
)

// testChatNames: a name is unique ignoring case, and a viewer can change
// its own.
func testChatNames(t *testing.T, s *Store) {
	ctx := context.Background()
	if name, _, err := s.ChatName(ctx, "v1"); err != nil || name != "" {
		t.Fatalf("name of a new viewer = %q, %v", name, err)
	}
	if err := s.SetChatName(ctx, "v1", "Ada", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetChatName(ctx, "v2", "ADA", t0); !errors.Is(err, chat.ErrNameTaken) {
		t.Fatalf("v2 takes ADA while v1 has Ada: %v, want ErrNameTaken", err)
	}
	if err := s.SetChatName(ctx, "v1", "Ada L", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetChatName(ctx, "v2", "ada", t0); err != nil {
		t.Fatalf("Ada is free again after v1 changed: %v", err)
	}
	name, changed, err := s.ChatName(ctx, "v1")
	if err != nil || name != "Ada L" || !changed.Equal(t0.Add(time.Hour)) {
		t.Fatalf("v1 = %q changed %v, %v", name, changed, err)
	}
}

// testChatMessages: messages come back in order with every field; status
// changes and room state are written with their log entry.
func testChatMessages(t *testing.T, s *Store) {
	ctx := context.Background()
	at := uint32(123456)
	var ms []chat.Message
	for i := range 5 {
		m := chat.Message{ID: fmt.Sprintf("c%d", i), Stream: "s1", Viewer: "v1", Name: "Ada", Text: fmt.Sprintf("hello %d <b>", i),
			TS: t0.Add(time.Duration(i) * time.Second).UnixMilli(), Status: chat.StatusVisible}
		if i == 1 {
			m.Question, m.SKU, m.At = true, "mug", &at
		}
		if i == 3 {
			m.Status = chat.StatusHeld
		}
		ms = append(ms, m)
	}
	other := chat.Message{ID: "x1", Stream: "s2", Name: "Bob", Text: "elsewhere", TS: t0.UnixMilli(), Status: chat.StatusVisible}
	if err := s.AddChatMessages(ctx, append(ms, other)); err != nil {
		t.Fatal(err)
	}
	got, err := s.RecentChat(ctx, "s1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != "c2" || got[2].ID != "c4" || got[1].Status != chat.StatusHeld {
		t.Fatalf("recent 3 = %+v", got)
	}
	q, err := s.ChatMessage(ctx, "s1", "c1")
	if err != nil || !q.Question || q.SKU != "mug" || q.At == nil || *q.At != at || q.Text != "hello 1 <b>" || q.TS != ms[1].TS {
		t.Fatalf("question read back = %+v, %v", q, err)
	}
	if _, err := s.ChatMessage(ctx, "s2", "c1"); !errors.Is(err, chat.ErrUnknownMessage) {
		t.Fatalf("c1 read as a message of s2: %v", err)
	}
	q.Answered = true
	if err := s.UpdateChatMessage(ctx, q, chat.Action{At: t0, By: chat.RoleHost, Action: "answer", Target: "c1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateChatMessage(ctx, chat.Message{ID: "nope", Stream: "s1", Status: chat.StatusDeleted}, chat.Action{At: t0, By: "host", Action: "delete"}); !errors.Is(err, chat.ErrUnknownMessage) {
		t.Fatalf("update of an unknown message: %v", err)
	}
	st := chat.RoomState{Settings: chat.Settings{SlowSec: 5, Filter: chat.Filter{Words: []string{"spam"}, Mode: chat.FilterHold}},
		PinnedID: "c1", Sanctions: map[string]chat.Sanction{"v9": {Name: "Troll", Banned: true}}}
	if err := s.SaveChatRoom(ctx, "s1", st, []string{"c0"}, chat.Action{At: t0.Add(time.Second), By: chat.RoleModerator, Action: "ban", Target: "v9"}); err != nil {
		t.Fatal(err)
	}
	back, err := s.ChatRoom(ctx, "s1")
	if err != nil || back.Settings.SlowSec != 5 || back.PinnedID != "c1" || !back.Sanctions["v9"].Banned || back.Settings.Filter.Words[0] != "spam" {
		t.Fatalf("room read back = %+v, %v", back, err)
	}
	if fresh, err := s.ChatRoom(ctx, "s2"); err != nil || fresh.PinnedID != "" || len(fresh.Sanctions) != 0 {
		t.Fatalf("new room = %+v, %v", fresh, err)
	}
	got, _ = s.RecentChat(ctx, "s1", 10)
	if len(got) != 4 || got[0].ID != "c1" || !got[0].Answered {
		t.Fatalf("after delete of c0 and answer of c1: %+v", got)
	}
	log, err := s.ChatActions(ctx, "s1", 10)
	if err != nil || len(log) != 2 || log[0].Action != "ban" || log[0].By != chat.RoleModerator || log[1].Action != "answer" {
		t.Fatalf("log = %+v, %v", log, err)
	}
	n, err := s.PruneChat(ctx, t0.Add(2500*time.Millisecond))
	if err != nil || n != 6 { // c0, c1, c2, x1 and both log entries
		t.Fatalf("prune = %d, %v", n, err)
	}
	if got, _ := s.RecentChat(ctx, "s1", 10); len(got) != 2 {
		t.Fatalf("after prune: %+v", got)
	}
}
