package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vitrine-live/vitrine/signaling/client/loadtest"
)

// load is `vitrine load`: a load test against any Vitrine (see
// signaling/client/loadtest). Progress goes to stderr, the report to stdout.
// -pli-answer makes the publisher answer keyframe requests like a browser
// (all), a rate-limited encoder (1s) or a fixed-interval one (none), to
// measure how long joiners wait for a picture with each. -simulcast
// publishes three layers as OBS does, -twcc has viewers send the feedback
// the server's bandwidth estimate needs, and -netns puts some viewers behind
// a network namespace the caller made (a constrained link, say), reported
// as their own group. -chatters, -chat-every and -reactions add chat and
// reactions on the viewers' data channels, and report what every viewer got
// of them.
func load(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vitrine load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "http://localhost:8080", "the Vitrine to load (its HTTP base URL)")
	publishTo := fs.String("publish", "", "publish the clip and post cues here instead of -server (a cluster's origin, to load an edge)")
	stream := fs.String("stream", "demo", "stream to watch (and publish to with -key)")
	key := fs.String("key", "", "stream key or admin token: publish the clip and post a cue each second (without it, only watch)")
	clipFile := fs.String("clip", "", "H.264 Annex-B file to publish instead of the embedded clip (one slice per frame, no B-frames)")
	clipAudio := fs.String("clip-audio", "", "Ogg Opus file to publish with -clip")
	fps := fs.Int("fps", 30, "frame rate of -clip")
	viewers := fs.Int("viewers", 20, "WHEP viewers to join")
	rate := fs.Float64("rate", 10, "viewers joining per second (0: all at once)")
	duration := fs.Duration("duration", 30*time.Second, "measured window, after the last viewer joined")
	interval := fs.Duration("interval", time.Second, "progress line interval")
	metrics := fs.String("metrics", "", "the server's metrics URL (default: -server + /metrics)")
	metricsToken := fs.String("metrics-token", "", "bearer token for the metrics URL (metrics.token)")
	viewerKind := fs.String("viewer", "lite", "viewer implementation: lite (H.264 + Opus, cheapest per packet) or pion (a full PeerConnection, any codec)")
	loopback := fs.Bool("loopback", false, "ICE on 127.0.0.1 only (server on this machine)")
	localIP := fs.String("local-ip", "", "ICE on this one local IPv4 address only (publisher and viewers)")
	nack := fs.Bool("nack", false, "lite viewers ask for lost video packets again (NACK, RTX) as browsers do, and report what came back")
	pliAnswer := fs.String("pli-answer", "all", "how the publisher answers keyframe requests (PLI/FIR): all (a keyframe at the next frame, like a browser), 1s (at most one a second, the rest dropped, like rate-limited hardware encoders) or none (only the clip's own keyframes, every 2 s in the embedded clip, like OBS or an RTSP camera)")
	pace := fs.Float64("pace", 0, "spread each video frame's packets at this multiple of the clip's bitrate, as browsers do (Chrome: 2.5); 0: back to back")
	simulcast := fs.Bool("simulcast", false, "publish three simulcast layers in one video m-line as OBS does (rids 0, 1, 2: 1280x720 ~2.5 Mbit/s, 640x360 ~800 kbit/s, 320x180 ~250 kbit/s); the report says which layer each viewer ends on")
	twcc := fs.Bool("twcc", false, "viewers send transport-wide congestion control feedback (TWCC), which the server's per-viewer bandwidth estimate needs (default: on with -simulcast)")
	netnsName := fs.String("netns", "", "network namespace (ip netns add NAME) that -netns-viewers of the lite viewers open their socket in, reported as the group \"constrained\" (needs root)")
	netnsIP := fs.String("netns-ip", "", "the IPv4 address those viewers bind to in -netns")
	netnsViewers := fs.Int("netns-viewers", 0, "how many of -viewers are in -netns (spread over the joins)")
	chatters := fs.Int("chatters", 0, "how many of -viewers chat (spread over the joins): each sets the chat name load-<run>-<n> when its chat snapshot arrives, then posts one message every -chat-every during the measured window; the report says which messages every viewer got and their latency. All viewers share this machine's address and the server lets an address create only chat.new_names_per_ip new names per 10 minutes (default 10): start it with a YAML config (-config) that has chat: {new_names_per_ip: N} with N above -chatters times the runs made within 10 minutes (there is no env var or flag for it)")
	chatEvery := fs.Duration("chat-every", 5*time.Second, "each chatter's interval between messages (the server takes 3 at once then 1 per second per viewer; more are refused, and counted)")
	reactions := fs.Float64("reactions", 0, "reaction taps per second in total during the measured window, round-robin over the viewers with a chat snapshot; the server drops a viewer's taps past 10 per second, so at most 10 x -viewers. The report has the reactions messages each viewer got per second and the taps they counted")
	asJSON := fs.Bool("json", false, "write the report as JSON")
	cpuProfile := fs.String("cpuprofile", "", "write the load tool's own CPU profile to this file")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vitrine load [flags]\n\nPublishes a clip over WHIP (with -key) and joins WHEP viewers, then reports delivery, loss, join times\n(to the first packet, the first keyframe, the first complete keyframe a decoder could show), how far\nbehind live joiners are 2 s in, latency, keyframe requests answered and CPU per packet; with -simulcast\nthe layer each viewer ends on, its switches, and per group (-netns: \"constrained\") when it reached the lowest;\nwith -chatters and -reactions, chat messages and reaction taps, what every viewer got of them, and chat latency.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("load: unexpected argument %q", fs.Arg(0))
	}
	twccSet := false
	fs.Visit(func(f *flag.Flag) { twccSet = twccSet || f.Name == "twcc" })
	if !twccSet {
		// Off without simulcast, so that figures taken before it stay
		// comparable: feedback is work for both sides.
		*twcc = *simulcast
	}
	cfg := loadtest.Config{
		Server: *server, Publish: *publishTo, Stream: *stream, Key: *key, Viewers: *viewers, Rate: *rate,
		Duration: *duration, Interval: *interval, MetricsURL: *metrics, MetricsToken: *metricsToken,
		Loopback: *loopback, LocalIP: *localIP, NACK: *nack, Pace: *pace,
		Simulcast: *simulcast, TWCC: *twcc, Netns: *netnsName, NetnsIP: *netnsIP, NetnsViewers: *netnsViewers,
		Chatters: *chatters, ChatEvery: *chatEvery, Reactions: *reactions,
		Progress: func(p loadtest.Progress) { printProgress(stderr, p) },
	}
	if *simulcast && (*key == "" || *clipFile != "") {
		return errors.New("load: -simulcast publishes the embedded layers: it needs -key, and no -clip")
	}
	answer, err := loadtest.ParsePLIAnswer(*pliAnswer)
	if err != nil {
		return err
	}
	cfg.PLIAnswer = answer
	switch *viewerKind {
	case "lite":
	case "pion":
		cfg.PionViewers = true
	default:
		return fmt.Errorf("load: -viewer %q: want lite or pion", *viewerKind)
	}
	if *clipFile != "" {
		c, err := readClip(*clipFile, *clipAudio, *fps)
		if err != nil {
			return err
		}
		cfg.Clip = c
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.WriteTable(stdout)
}

func readClip(video, audio string, fps int) (*loadtest.Clip, error) {
	v, err := os.Open(video)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	var a io.Reader
	if audio != "" {
		f, err := os.Open(audio)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		a = f
	}
	return loadtest.LoadClip(v, a, fps)
}

func printProgress(w io.Writer, p loadtest.Progress) {
	fmt.Fprintf(w, "%6.1fs %-9s viewers %d joined %d connected %d with media %d failed  %8.0f pkt/s",
		p.Elapsed.Seconds(), p.Phase, p.Joined, p.Connected, p.WithMedia, p.Failed, p.Rate)
	fmt.Fprintf(w, "  loss %.2f%%", 100*p.Loss)
	if p.Sent > 0 {
		fmt.Fprintf(w, "  sent %d", p.Sent)
	}
	if p.ChatSent > 0 || p.Taps > 0 {
		fmt.Fprintf(w, "  chat %d  taps %d", p.ChatSent, p.Taps)
	}
	fmt.Fprintln(w)
}
