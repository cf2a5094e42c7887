package chat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ActionRequest is one moderation action as the API receives it.
type ActionRequest struct {
	Action  string   `json:"action"`
	Message string   `json:"message,omitempty"`
	Viewer  string   `json:"viewer,omitempty"`
	Minutes int      `json:"minutes,omitempty"`
	Seconds *int     `json:"seconds,omitempty"`
	Words   []string `json:"words,omitempty"`
	Mode    string   `json:"mode,omitempty"`
	On      *bool    `json:"on,omitempty"`
}

// Moderate takes one action by a moderator (by is its role), writes it with
// its log entry and tells viewers what changes for them. It answers with the
// room's settings after the action, or a *Refusal.
func (r *Room) Moderate(ctx context.Context, by string, req ActionRequest) (Settings, error) {
	// The message acted on may still wait in the write batch.
	r.save(ctx)
	var name string
	if req.Viewer != "" {
		if len(req.Viewer) > 64 {
			return Settings{}, refuse("invalid", "viewer is a viewer id")
		}
		var err error
		if name, err = r.cfg.Names.Get(ctx, req.Viewer); err != nil {
			return Settings{}, err
		}
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Settings{}, ErrClosed
	}
	a := Action{At: now, By: by, Action: req.Action, Target: req.Message}
	var err error
	switch req.Action {
	case "delete", "approve", "reject", "answer", "pin":
		err = r.onMessage(ctx, req, a)
	case "unpin":
		err = r.pin(ctx, nil, a)
	case "mute", "unmute", "ban", "unban":
		err = r.onViewer(ctx, req, name, a, now)
	case "slow", "filter", "calm":
		err = r.setting(ctx, req, a)
	default:
		err = refuse("invalid", "action must be delete, approve, reject, answer, pin, unpin, mute, unmute, ban, unban, slow, filter or calm")
	}
	if err != nil {
		return Settings{}, err
	}
	r.cfg.Metrics.moderation.WithLabelValues(req.Action).Inc()
	r.cfg.Log.Info("chat: moderation", "stream", r.stream, "by", by, "action", req.Action, "message", req.Message, "viewer", req.Viewer)
	return r.state.Settings, nil
}

// onMessage acts on one message; r.mu held.
func (r *Room) onMessage(ctx context.Context, req ActionRequest, a Action) error {
	m, err := r.find(ctx, req.Message)
	if err != nil {
		return err
	}
	a.Detail = m.Name + ": " + m.Text
	switch req.Action {
	case "delete":
		if m.Status == StatusDeleted || m.Status == StatusRejected {
			return nil
		}
		m.Status = StatusDeleted
		if err := r.cfg.Store.UpdateChatMessage(ctx, m, a); err != nil {
			return err
		}
		r.forget(m.ID)
		r.broadcast(idsMessage{V: 1, Type: "chat.delete", IDs: []string{m.ID}}, "chat.delete")
		r.share(Event{Deleted: []string{m.ID}})
		if r.pinned != nil && r.pinned.ID == m.ID {
			return r.pin(ctx, nil, Action{At: a.At, By: a.By, Action: "unpin", Target: m.ID})
		}
	case "approve", "reject":
		if m.Status != StatusHeld {
			return refuse("invalid", "message %s is not held", m.ID)
		}
		m.Status = StatusVisible
		if req.Action == "reject" {
			m.Status = StatusRejected
		}
		if err := r.cfg.Store.UpdateChatMessage(ctx, m, a); err != nil {
			return err
		}
		r.held = slices.DeleteFunc(r.held, func(h Message) bool { return h.ID == m.ID })
		if m.Status == StatusVisible {
			r.publish(m, a.At)
			r.share(Event{Messages: []Message{publicOne(m)}})
		} else {
			// Only its author's page knows the id: it can stop "waiting".
			r.broadcast(idMessage{V: 1, Type: "chat.rejected", ID: m.ID}, "chat.rejected")
			r.share(Event{Rejected: m.ID})
		}
	case "answer":
		if m.Status != StatusVisible || !m.Question {
			return refuse("invalid", "message %s is not a visible question", m.ID)
		}
		m.Answered = true
		if err := r.cfg.Store.UpdateChatMessage(ctx, m, a); err != nil {
			return err
		}
		for i := range r.recent {
			if r.recent[i].ID == m.ID {
				r.recent[i].Answered = true
			}
		}
		r.broadcast(idMessage{V: 1, Type: "chat.answered", ID: m.ID}, "chat.answered")
		r.share(Event{Answered: m.ID})
	case "pin":
		if m.Status != StatusVisible {
			return refuse("invalid", "message %s is not visible", m.ID)
		}
		return r.pin(ctx, &m, a)
	}
	return nil
}

type idsMessage struct {
	V    int      `json:"v"`
	Type string   `json:"type"`
	IDs  []string `json:"ids"`
}

type idMessage struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	ID   string `json:"id"`
}

// find returns a message of the room, from memory or the store; r.mu held.
func (r *Room) find(ctx context.Context, id string) (Message, error) {
	if id == "" || len(id) > 64 {
		return Message{}, refuse("invalid", "message is a message id")
	}
	for _, list := range [][]Message{r.recent, r.held} {
		for _, m := range list {
			if m.ID == id {
				return m, nil
			}
		}
	}
	m, err := r.cfg.Store.ChatMessage(ctx, r.stream, id)
	if errors.Is(err, ErrUnknownMessage) {
		return m, refuse("unknown_message", "no message %s in this chat", id)
	}
	return m, err
}

// forget takes a message off what viewers and late joiners get; r.mu held.
func (r *Room) forget(id string) {
	drop := func(m Message) bool { return m.ID == id }
	r.recent = slices.DeleteFunc(r.recent, drop)
	r.held = slices.DeleteFunc(r.held, drop)
	r.batch = slices.DeleteFunc(r.batch, drop)
}

// pin pins m over the video (nil unpins); r.mu held.
func (r *Room) pin(ctx context.Context, m *Message, a Action) error {
	next := r.state.clone()
	next.PinnedID = ""
	if m != nil {
		next.PinnedID = m.ID
	}
	if err := r.cfg.Store.SaveChatRoom(ctx, r.stream, next, nil, a); err != nil {
		return err
	}
	r.state = next
	r.pinned = nil
	msg := pinMessage{V: 1, Type: "chat.pin"}
	if m != nil {
		p := publicOne(*m)
		r.pinned, msg.Message = m, &p
	}
	r.broadcast(msg, "chat.pin")
	r.share(Event{Pin: msg.Message, Unpin: m == nil})
	return nil
}

type pinMessage struct {
	V       int      `json:"v"`
	Type    string   `json:"type"`
	Message *Message `json:"message,omitempty"`
}

// onViewer mutes, unmutes, bans or unbans a viewer; r.mu held. A ban also
// deletes the viewer's messages still on screen.
func (r *Room) onViewer(ctx context.Context, req ActionRequest, name string, a Action, now time.Time) error {
	if req.Viewer == "" {
		return refuse("invalid", "viewer is required")
	}
	a.Target = req.Viewer
	next := r.state.clone()
	s := next.Sanctions[req.Viewer]
	s.Name = name
	var deleted []string
	switch req.Action {
	case "mute":
		if req.Minutes < 1 || req.Minutes > 1440 {
			return refuse("invalid", "minutes must be 1-1440")
		}
		s.MutedUntil = now.Add(time.Duration(req.Minutes) * time.Minute).UnixMilli()
		a.Detail = fmt.Sprintf("%s for %d min", name, req.Minutes)
	case "unmute":
		s.MutedUntil = 0
		a.Detail = name
	case "ban":
		s.Banned = true
		a.Detail = name
		for _, list := range [][]Message{r.recent, r.held, r.batch} {
			for _, m := range list {
				if m.Viewer == req.Viewer && !slices.Contains(deleted, m.ID) {
					deleted = append(deleted, m.ID)
				}
			}
		}
	case "unban":
		s.Banned = false
		a.Detail = name
	}
	if s.MutedUntil <= now.UnixMilli() && !s.Banned {
		delete(next.Sanctions, req.Viewer)
	} else {
		next.Sanctions[req.Viewer] = s
	}
	unpin := r.pinned != nil && slices.Contains(deleted, r.pinned.ID)
	if unpin {
		next.PinnedID = ""
	}
	if err := r.cfg.Store.SaveChatRoom(ctx, r.stream, next, deleted, a); err != nil {
		return err
	}
	r.state = next
	for _, id := range deleted {
		r.forget(id)
	}
	if len(deleted) > 0 {
		r.broadcast(idsMessage{V: 1, Type: "chat.delete", IDs: deleted}, "chat.delete")
	}
	if unpin {
		r.pinned = nil
		r.broadcast(pinMessage{V: 1, Type: "chat.pin"}, "chat.pin")
	}
	r.share(Event{Deleted: deleted, Unpin: unpin, Reload: true})
	return nil
}

// setting changes slow mode, the word filter or calm mode; r.mu held.
func (r *Room) setting(ctx context.Context, req ActionRequest, a Action) error {
	next := r.state.clone()
	switch req.Action {
	case "slow":
		if req.Seconds == nil || *req.Seconds < 0 || *req.Seconds > 3600 {
			return refuse("invalid", "seconds must be 0-3600")
		}
		next.Settings.SlowSec = *req.Seconds
		a.Detail = fmt.Sprintf("%d s", *req.Seconds)
	case "filter":
		f, err := validFilter(req.Words, req.Mode)
		if err != nil {
			return err
		}
		next.Settings.Filter = f
		a.Detail = fmt.Sprintf("%d words, %s", len(f.Words), f.Mode)
	case "calm":
		if req.On == nil {
			return refuse("invalid", "on must be true or false")
		}
		next.Settings.Calm = *req.On
		a.Detail = fmt.Sprint(*req.On)
	}
	if err := r.cfg.Store.SaveChatRoom(ctx, r.stream, next, nil, a); err != nil {
		return err
	}
	r.setState(next)
	r.share(Event{Reload: true})
	return nil
}

// View is the room as a moderator sees it.
type View struct {
	Messages  []Message       `json:"messages"`
	Held      []Message       `json:"held"`
	Questions []QuestionGroup `json:"questions"`
	Pinned    *Message        `json:"pinned,omitempty"`
	Settings  Settings        `json:"settings"`
	Muted     []Sanctioned    `json:"muted"`
	Banned    []Sanctioned    `json:"banned"`
}

// QuestionGroup is the open questions about one product ("" for none).
type QuestionGroup struct {
	SKU      string    `json:"sku"`
	Messages []Message `json:"messages"`
}

// Sanctioned is a muted or banned viewer.
type Sanctioned struct {
	Viewer  string `json:"viewer"`
	Name    string `json:"name"`
	UntilMS int64  `json:"until_ms,omitempty"`
}

// View returns the room for the studio: recent messages with their status,
// the held queue, open questions per product, settings and sanctions.
func (r *Room) View(ctx context.Context) (View, error) {
	r.save(ctx)
	ms, err := r.cfg.Store.RecentChat(ctx, r.stream, recentView)
	if err != nil {
		return View{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	v := View{Messages: lastN(ms, 200), Held: slices.Clone(r.held), Settings: r.state.Settings,
		Questions: []QuestionGroup{}, Muted: []Sanctioned{}, Banned: []Sanctioned{}}
	if v.Messages == nil {
		v.Messages = []Message{}
	}
	if v.Held == nil {
		v.Held = []Message{}
	}
	if v.Settings.Filter.Words == nil {
		v.Settings.Filter = Filter{Words: []string{}, Mode: FilterMask}
	}
	if r.pinned != nil {
		p := *r.pinned
		v.Pinned = &p
	}
	for _, m := range ms {
		if !m.Question || m.Answered || m.Status != StatusVisible {
			continue
		}
		i := slices.IndexFunc(v.Questions, func(g QuestionGroup) bool { return g.SKU == m.SKU })
		if i < 0 {
			v.Questions = append(v.Questions, QuestionGroup{SKU: m.SKU})
			i = len(v.Questions) - 1
		}
		v.Questions[i].Messages = append(v.Questions[i].Messages, m)
	}
	now := r.cfg.Now().UnixMilli()
	for id, s := range r.state.Sanctions {
		if s.Banned {
			v.Banned = append(v.Banned, Sanctioned{Viewer: id, Name: s.Name})
		}
		if s.MutedUntil > now {
			v.Muted = append(v.Muted, Sanctioned{Viewer: id, Name: s.Name, UntilMS: s.MutedUntil})
		}
	}
	byName := func(a, b Sanctioned) int { return cmp.Compare(a.Name+a.Viewer, b.Name+b.Viewer) }
	slices.SortFunc(v.Banned, byName)
	slices.SortFunc(v.Muted, byName)
	return v, nil
}

// Log returns the room's moderation log, newest first.
func (r *Room) Log(ctx context.Context, limit int) ([]Action, error) {
	return r.cfg.Store.ChatActions(ctx, r.stream, limit)
}
