// Package chat is the people side of a show: viewers' messages and
// questions about the product on screen, reactions, and the moderation that
// lets a creator sell and keep the room calm at once. A Room per stream
// fans messages out to the same viewers as the overlay, keeps the last ones
// for late joiners, and writes everything through a Store.
package chat

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Message is one chat message. Viewers get it without Status (they only
// ever see visible ones); moderators see every status.
type Message struct {
	ID     string `json:"id"`
	Stream string `json:"-"`
	Viewer string `json:"viewer,omitempty"`
	Name   string `json:"name"`
	// Role is RoleHost or RoleModerator for the studio's own messages, ""
	// for viewers.
	Role     string `json:"role,omitempty"`
	Text     string `json:"text"`
	Question bool   `json:"question,omitempty"`
	// SKU is the product whose card was on screen when a question came.
	SKU      string `json:"sku,omitempty"`
	Answered bool   `json:"answered,omitempty"`
	// At is the stream's media clock (the newest frame ingested) when the
	// message came, so a replay can show it in sync; nil before media.
	At     *uint32 `json:"at,omitempty"`
	TS     int64   `json:"ts"` // server time, Unix milliseconds
	Status string  `json:"status,omitempty"`
}

// Message statuses.
const (
	StatusVisible  = "visible"
	StatusHeld     = "held" // waiting for a moderator (calm mode, word filter)
	StatusDeleted  = "deleted"
	StatusRejected = "rejected" // a held message a moderator refused
)

// Who acts: the studio's roles.
const (
	RoleHost      = "host"
	RoleModerator = "moderator"
	RoleAdmin     = "admin"
)

// Reactions viewers can tap.
var Reactions = []string{"heart", "fire", "clap", "laugh", "wow"}

// Limits of what a viewer sends.
const (
	MaxText        = 300 // characters
	MaxFilterWords = 200
	maxFilterWord  = 40
	minName        = 2
	maxName        = 24
	// NameLock is how long a name stays after a change.
	NameLock = 10 * time.Minute
)

// Settings are a room's moderation switches.
type Settings struct {
	// SlowSec: each viewer may post once per SlowSec seconds; 0 is off.
	SlowSec int `json:"slow_s"`
	// Calm holds every viewer message for approval.
	Calm   bool   `json:"calm"`
	Filter Filter `json:"filter"`
}

// Filter modes.
const (
	FilterMask = "mask" // a listed word is replaced by *s
	FilterHold = "hold" // a message with a listed word is held
)

// Filter is a room's word list.
type Filter struct {
	Words []string `json:"words"`
	Mode  string   `json:"mode"`
}

// Sanction is what moderators decided about one viewer of a room.
type Sanction struct {
	Name       string `json:"name,omitempty"` // the name when it was decided
	MutedUntil int64  `json:"muted_until_ms,omitempty"`
	Banned     bool   `json:"banned,omitempty"`
}

// RoomState is what the store keeps of a room besides its messages.
type RoomState struct {
	Settings         Settings            `json:"settings"`
	PinnedID         string              `json:"pinned_id,omitempty"`
	ModeratorKeyHash string              `json:"moderator_key_hash,omitempty"`
	Sanctions        map[string]Sanction `json:"sanctions,omitempty"`
}

// Action is one moderation step, as the log keeps it.
type Action struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	Action string    `json:"action"`
	Target string    `json:"target,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Store keeps chat: names, messages, each room's state and the moderation
// log. sqlstore implements it beside the commerce store.
type Store interface {
	// ChatName returns a viewer's name and when it was set; "" if none.
	ChatName(ctx context.Context, viewer string) (string, time.Time, error)
	// SetChatName gives a viewer a name; ErrNameTaken if another viewer has
	// it (ignoring case).
	SetChatName(ctx context.Context, viewer, name string, now time.Time) error
	// AddChatMessages stores new messages, all or none.
	AddChatMessages(ctx context.Context, ms []Message) error
	// UpdateChatMessage writes m's Status and Answered and logs a, in one
	// transaction; ErrUnknownMessage if m.ID is not of m.Stream.
	UpdateChatMessage(ctx context.Context, m Message, a Action) error
	// ChatMessage returns one message of a stream; ErrUnknownMessage.
	ChatMessage(ctx context.Context, stream, id string) (Message, error)
	// RecentChat lists a stream's newest visible and held messages, at most
	// limit, oldest first.
	RecentChat(ctx context.Context, stream string, limit int) ([]Message, error)
	// ChatRoom returns a room's state; the zero state for a new room.
	ChatRoom(ctx context.Context, stream string) (RoomState, error)
	// SaveChatRoom writes a room's state, marks the messages deleted as
	// deleted and logs a, in one transaction.
	SaveChatRoom(ctx context.Context, stream string, st RoomState, deleted []string, a Action) error
	// ChatActions lists a room's moderation log, newest first.
	ChatActions(ctx context.Context, stream string, limit int) ([]Action, error)
	// PruneChat deletes messages and log entries older than before; it may
	// stop after a batch.
	PruneChat(ctx context.Context, before time.Time) (int64, error)
}

// Errors of the store.
var (
	ErrNameTaken      = errors.New("chat: name taken")
	ErrUnknownMessage = errors.New("chat: no such message")
)

// Refusal is a post, a name or an action the room did not take, with what
// to tell the client: Code is the protocol's error code, RetryAfter when
// trying again later helps.
type Refusal struct {
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (r *Refusal) Error() string { return r.Message }

func refuse(code, format string, args ...any) *Refusal {
	return &Refusal{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ValidName cleans a display name (spaces trimmed and collapsed) and checks
// it; the key it returns is what uniqueness compares.
func ValidName(name string) (clean, key string, err error) {
	clean = strings.Join(strings.Fields(name), " ")
	n := utf8.RuneCountInString(clean)
	if n < minName || n > maxName {
		return "", "", refuse("invalid_name", "a name has %d to %d characters", minName, maxName)
	}
	for i, r := range clean {
		ok := unicode.IsLetter(r) || unicode.IsDigit(r) || (i > 0 && strings.ContainsRune(" _-.", r))
		if !ok {
			return "", "", refuse("invalid_name", "a name has letters, digits, spaces and _ - . and starts with a letter or digit")
		}
	}
	key = NameKey(clean)
	bare := strings.Map(func(r rune) rune {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			return r
		}
		return -1
	}, key)
	for _, reserved := range []string{"host", "creator", "moderator", "admin", "vitrine"} {
		if bare == reserved {
			return "", "", refuse("invalid_name", "%q is reserved", clean)
		}
	}
	return clean, key, nil
}

// NameKey is what makes two names the same one: case is ignored.
func NameKey(name string) string { return strings.ToLower(name) }

// CleanText makes a message's text plain: line breaks and tabs become
// spaces, other control characters and the bidirectional overrides that
// could make a message display as something else are dropped, spaces are
// trimmed. It refuses an empty or over-long text.
func CleanText(text string) (string, error) {
	var b strings.Builder
	for _, r := range text {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			b.WriteByte(' ')
		case unicode.IsControl(r), r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069, r == utf8.RuneError:
		default:
			b.WriteRune(r)
		}
	}
	clean := strings.TrimSpace(b.String())
	switch n := utf8.RuneCountInString(clean); {
	case n == 0:
		return "", refuse("invalid", "the message is empty")
	case n > MaxText:
		return "", refuse("invalid", "a message has at most %d characters (this one has %d)", MaxText, n)
	}
	return clean, nil
}

// validFilter cleans a word list: lower case, trimmed, no duplicates.
func validFilter(words []string, mode string) (Filter, error) {
	if mode != FilterMask && mode != FilterHold {
		return Filter{}, refuse("invalid", "filter mode must be mask or hold")
	}
	if len(words) > MaxFilterWords {
		return Filter{}, refuse("invalid", "at most %d filter words", MaxFilterWords)
	}
	f := Filter{Mode: mode, Words: []string{}}
	seen := map[string]bool{}
	for _, w := range words {
		w = strings.ToLower(strings.TrimSpace(w))
		if w == "" || seen[w] {
			continue
		}
		if utf8.RuneCountInString(w) > maxFilterWord || strings.ContainsFunc(w, func(r rune) bool { return !isWordRune(r) }) {
			return Filter{}, refuse("invalid", "a filter word is letters and digits, at most %d: %q", maxFilterWord, w)
		}
		seen[w] = true
		f.Words = append(f.Words, w)
	}
	return f, nil
}

// apply runs the filter on a text: the text with listed words masked (in
// mask mode) and whether a listed word was found. Words are compared whole
// (runs of letters and digits, ignoring case), so "class" does not match
// "ass".
func (f Filter) apply(text string) (string, bool) {
	if len(f.Words) == 0 {
		return text, false
	}
	listed := make(map[string]bool, len(f.Words))
	for _, w := range f.Words {
		listed[w] = true
	}
	runes := []rune(text)
	hit := false
	for i := 0; i < len(runes); {
		if !isWordRune(runes[i]) {
			i++
			continue
		}
		j := i
		for j < len(runes) && isWordRune(runes[j]) {
			j++
		}
		if listed[strings.ToLower(string(runes[i:j]))] {
			hit = true
			if f.Mode == FilterMask {
				for k := i; k < j; k++ {
					runes[k] = '*'
				}
			}
		}
		i = j
	}
	return string(runes), hit
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// ValidReaction reports whether value is one of Reactions.
func ValidReaction(value string) bool {
	for _, r := range Reactions {
		if r == value {
			return true
		}
	}
	return false
}
