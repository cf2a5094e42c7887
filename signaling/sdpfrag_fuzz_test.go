package signaling

import (
	"regexp"
	"strings"
	"testing"

	"github.com/pion/sdp/v3"
)

// fuzzRemoteOffer is a creator's offer as pion keeps it after the WHIP
// POST: what a PATCH that restarts ICE rewrites.
const fuzzRemoteOffer = "v=0\r\n" +
	"o=- 4215775240449105457 2 IN IP4 127.0.0.1\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=group:BUNDLE 0 1\r\n" +
	"a=msid-semantic: WMS\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 102\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:oldU\r\n" +
	"a=ice-pwd:oldpasswordoldpassword00\r\n" +
	"a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:0\r\n" +
	"a=sendonly\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:102 H264/90000\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:oldU\r\n" +
	"a=ice-pwd:oldpasswordoldpassword00\r\n" +
	"a=mid:1\r\n" +
	"a=sendonly\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:111 opus/48000/2\r\n"

// FuzzSDPFrag feeds a WHIP/WHEP PATCH body (application/trickle-ice-sdpfrag)
// to the parser sessionPatch uses, and an accepted ICE restart through the
// rewrite that turns it into pion's restart offer. Nothing panics; a refused
// body has a reason; every candidate taken is an a=candidate value tied to
// exactly one media section; credentials taken are ice-chars (RFC 8839), so
// the restart offer still parses and carries exactly the new credentials.
func FuzzSDPFrag(f *testing.F) {
	for _, seed := range []string{
		"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\na=end-of-candidates\r\n",
		"a=ice-ufrag:oldU\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 UDP 1 127.0.0.1 5000 typ host\r\n",
		"m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 ::1 9 typ host\r\nm=video 9 RTP/AVP 0\r\na=candidate:2 1 udp 1 ::1 9 typ host\r\n",
		"a=end-of-candidates",
		"a=ice-ufrag:newU\na=ice-pwd:newpasswordnewpassword00\n",
		"a=ice-ufrag:bad\rufrag\r\na=ice-pwd:newpasswordnewpassword00\r\n",
		"a=ice-ufrag: \r\na=ice-pwd:x y\r\n",
		"not sdp", "", "\r\n\r\n", "a=", "a=mid:\r\na=candidate:",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		frag, err := parseSDPFrag(body)
		if err != nil {
			if frag != nil || err.Error() == "" {
				t.Fatalf("%q: refused with %v and %+v", body, err, frag)
			}
			return
		}
		for _, c := range frag.candidates {
			if !strings.HasPrefix(c.Candidate, "candidate:") || strings.ContainsAny(c.Candidate, "\r\n") {
				t.Fatalf("%q: candidate %q", body, c.Candidate)
			}
			if (c.SDPMid == nil) == (c.SDPMLineIndex == nil) {
				t.Fatalf("%q: candidate %q needs one of mid and m-line index", body, c.Candidate)
			}
		}
		for _, cred := range []string{frag.ufrag, frag.pwd} {
			if cred != "" && !iceCharsRE.MatchString(cred) {
				t.Fatalf("%q: credential %q taken", body, cred)
			}
		}
		if frag.ufrag == "" || frag.pwd == "" {
			return
		}
		offer := replaceICECredentials(fuzzRemoteOffer, frag.ufrag, frag.pwd)
		var desc sdp.SessionDescription
		if err := desc.UnmarshalString(offer); err != nil {
			t.Fatalf("%q: restart offer does not parse: %v\n%s", body, err, offer)
		}
		for _, md := range desc.MediaDescriptions {
			u, _ := md.Attribute("ice-ufrag")
			p, _ := md.Attribute("ice-pwd")
			if u != frag.ufrag || p != frag.pwd {
				t.Fatalf("%q: restart offer has %q/%q, want %q/%q", body, u, p, frag.ufrag, frag.pwd)
			}
		}
		if iceUfrag(offer) != frag.ufrag {
			t.Fatalf("%q: restart offer's ufrag %q", body, iceUfrag(offer))
		}
		if strings.Count(offer, "\r\n") != strings.Count(fuzzRemoteOffer, "\r\n") {
			t.Fatalf("%q: the rewrite added or removed lines:\n%s", body, offer)
		}
	})
}

// iceCharsRE is RFC 8839's ice-char (ALPHA / DIGIT / "+" / "/"), 1 to 256
// of them: the test's own reading of the rule, not the parser's.
var iceCharsRE = regexp.MustCompile(`^[A-Za-z0-9+/]{1,256}$`)
