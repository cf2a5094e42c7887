package signaling

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pion/webrtc/v4"
)

// sdpFrag is what a WHIP/WHEP PATCH carries (RFC 8840): ICE credentials and
// candidates, each candidate tied to its media section.
type sdpFrag struct {
	ufrag, pwd string
	candidates []webrtc.ICECandidateInit
}

// parseSDPFrag reads an application/trickle-ice-sdpfrag body. Unknown
// attributes are ignored; lines that are not SDP are an error.
func parseSDPFrag(body string) (*sdpFrag, error) {
	f := &sdpFrag{}
	var mid *string
	var mline uint16
	sections := -1
	for i, line := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if len(line) < 2 || line[1] != '=' {
			return nil, fmt.Errorf("line %d is not an SDP line: %q", i+1, truncate(line, 40))
		}
		// A CR ends a line only before its LF (RFC 8866 section 5); inside
		// one it would reach pion in a candidate or a credential.
		if strings.ContainsRune(line, '\r') {
			return nil, fmt.Errorf("line %d has a CR inside it: %q", i+1, truncate(line, 40))
		}
		switch {
		case strings.HasPrefix(line, "m="):
			sections++
			mline = uint16(sections)
			mid = nil
		case strings.HasPrefix(line, "a=mid:"):
			m := strings.TrimPrefix(line, "a=mid:")
			mid = &m
		case strings.HasPrefix(line, "a=ice-ufrag:"):
			f.ufrag = strings.TrimPrefix(line, "a=ice-ufrag:")
		case strings.HasPrefix(line, "a=ice-pwd:"):
			f.pwd = strings.TrimPrefix(line, "a=ice-pwd:")
		case strings.HasPrefix(line, "a=candidate:"):
			c := webrtc.ICECandidateInit{Candidate: strings.TrimPrefix(line, "a=")}
			if mid != nil {
				m := *mid
				c.SDPMid = &m
			} else {
				idx := mline
				c.SDPMLineIndex = &idx
			}
			f.candidates = append(f.candidates, c)
		}
	}
	if f.ufrag == "" && len(f.candidates) == 0 && !strings.Contains(body, "a=end-of-candidates") {
		return nil, errors.New("no ICE credentials or candidates in the sdpfrag")
	}
	// The credentials go into the restart offer pion parses, and pion takes
	// a remote ufrag or password as it comes (a bare CR, spaces, any byte).
	for _, c := range []struct{ name, v string }{{"a=ice-ufrag", f.ufrag}, {"a=ice-pwd", f.pwd}} {
		if c.v != "" && !iceChars(c.v) {
			return nil, fmt.Errorf("%s must be 1 to 256 ice-chars (letters, digits, '+' and '/'; RFC 8839), got %q", c.name, truncate(c.v, 40))
		}
	}
	return f, nil
}

// iceChars reports whether s is 1 to 256 ice-chars (RFC 8839 section 5.4):
// what an ICE username fragment and password are made of.
func iceChars(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// iceUfrag returns the first a=ice-ufrag in an SDP.
func iceUfrag(sdp string) string {
	for _, line := range strings.Split(sdp, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "a=ice-ufrag:"); ok {
			return v
		}
	}
	return ""
}

// replaceICECredentials rewrites every ufrag and password of an SDP; this is
// how the client's PATCH becomes a restart offer for pion.
func replaceICECredentials(sdp, ufrag, pwd string) string {
	lines := strings.Split(sdp, "\r\n")
	for i, line := range lines {
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:"):
			lines[i] = "a=ice-ufrag:" + ufrag
		case strings.HasPrefix(line, "a=ice-pwd:"):
			lines[i] = "a=ice-pwd:" + pwd
		}
	}
	return strings.Join(lines, "\r\n")
}

// localFrag builds the PATCH answer to an ICE restart: the server's new
// credentials and its candidates, under the first media section (all media is
// bundled on one transport).
func localFrag(sdp string) string {
	var b strings.Builder
	var ufrag, pwd, mline, mid string
	var candidates []string
	for _, line := range strings.Split(sdp, "\r\n") {
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:") && ufrag == "":
			ufrag = line
		case strings.HasPrefix(line, "a=ice-pwd:") && pwd == "":
			pwd = line
		case strings.HasPrefix(line, "m=") && mline == "":
			mline = line
		case strings.HasPrefix(line, "a=mid:") && mid == "":
			mid = line
		case strings.HasPrefix(line, "a=candidate:"):
			candidates = append(candidates, line)
		}
	}
	for _, l := range []string{ufrag, pwd, mline, mid} {
		if l != "" {
			b.WriteString(l + "\r\n")
		}
	}
	seen := map[string]bool{}
	for _, c := range candidates {
		if !seen[c] {
			seen[c] = true
			b.WriteString(c + "\r\n")
		}
	}
	b.WriteString("a=end-of-candidates\r\n")
	return b.String()
}
