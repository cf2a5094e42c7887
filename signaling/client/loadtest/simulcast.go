package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// publishSimulcast goes live with the run's layers in one video m-line, the
// way OBS's WHIP output offers them: one encoding per rid (LayerRIDs, top
// first), a=simulcast:send 0;1;2, the mid and rid header extensions on every
// packet (pion does not add them itself), each layer's RTCP read by its rid
// so that keyframe requests for its SSRC reach watch. The audio goes in its
// own m-line as without simulcast.
func (r *run) publishSimulcast(ctx context.Context, api *webrtc.API, endpoint string, watch *keyframeWatch) (*client.Session, []*layerOut, *webrtc.TrackLocalStaticRTP, error) {
	if len(r.layers) > len(LayerRIDs) {
		return nil, nil, nil, errors.New("more layers than rids")
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, nil, nil, err
	}
	codec := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}
	out := make([]*layerOut, len(r.layers))
	for l := range r.layers {
		t, err := webrtc.NewTrackLocalStaticRTP(codec, "video", "vitrine-load", webrtc.WithRTPStreamID(LayerRIDs[l]))
		if err != nil {
			pc.Close()
			return nil, nil, nil, err
		}
		out[l] = &layerOut{track: t}
	}
	tr, err := pc.AddTransceiverFromTrack(out[0].track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		pc.Close()
		return nil, nil, nil, err
	}
	sender := tr.Sender()
	for _, o := range out[1:] {
		if err := sender.AddEncoding(o.track); err != nil {
			pc.Close()
			return nil, nil, nil, err
		}
	}
	ssrcs := map[uint32]int{}
	for _, e := range sender.GetParameters().Encodings {
		for l := range out {
			if e.RID == LayerRIDs[l] {
				ssrcs[uint32(e.SSRC)] = l
			}
		}
	}
	watch.ssrcs.Store(&ssrcs)
	for l := range out {
		go func() {
			buf := make([]byte, 1500)
			for {
				if _, _, err := sender.ReadSimulcast(buf, LayerRIDs[l]); err != nil {
					return
				}
			}
		}()
	}
	audio, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "vitrine-load")
	if err != nil {
		pc.Close()
		return nil, nil, nil, err
	}
	atr, err := pc.AddTransceiverFromTrack(audio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		pc.Close()
		return nil, nil, nil, err
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := atr.Sender().Read(buf); err != nil {
				return
			}
		}
	}()
	sess, err := client.Offer(ctx, pc, endpoint, r.cfg.Key)
	if err != nil {
		return nil, nil, nil, err
	}
	var midID, ridID uint8
	for _, x := range sender.GetParameters().HeaderExtensions {
		switch x.URI {
		case sdp.SDESMidURI:
			midID = uint8(x.ID)
		case sdp.SDESRTPStreamIDURI:
			ridID = uint8(x.ID)
		}
	}
	if midID == 0 || ridID == 0 {
		sess.Delete(context.WithoutCancel(ctx))
		return nil, nil, nil, errors.New("the answer has no mid or rid header extension: the server takes no simulcast")
	}
	mid := []byte(tr.Mid())
	for l, o := range out {
		// Room for the extension pion's TWCC interceptor adds to each
		// packet's copy, so that it does not allocate.
		o.pkt.Extensions = make([]rtp.Extension, 0, 4)
		err := errors.Join(o.pkt.SetExtension(midID, mid), o.pkt.SetExtension(ridID, []byte(LayerRIDs[l])))
		if err != nil {
			sess.Delete(context.WithoutCancel(ctx))
			return nil, nil, nil, err
		}
		// As browsers do: each layer its own random timestamp base and
		// first sequence number.
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.base, o.seq = binary.BigEndian.Uint32(b[:]), binary.BigEndian.Uint16(b[4:])
	}
	return sess, out, audio, nil
}
