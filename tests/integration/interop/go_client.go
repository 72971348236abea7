// go_client: Go's crypto/tls and net/http (its own HTTP/2) as tlsgate's client.
//
//	go_client -port PORT -ca CA
//
// An independent TLS stack (no OpenSSL anywhere) and an independent HTTP/2
// client. Standard library only; meson builds it offline (tests/integration/
// meson.build). One http.Transport with the test CA and a session cache:
//
//	call1  1 MiB echo (1 MiB each way), a new connection
//	call2  a small echo on the same connection
//	       CloseIdleConnections: the connection is closed
//	call3  a small echo on a new connection, which resumes the first's session
//
// Go's client answers a server's KeyUpdate but has no API to send one, and
// tlsgate never starts one, so key updates are not exercised here
// (gnutls_cli.py does that).
//
// Prints facts, one "name value" per line, which the C++ test checks
// (interop_test.cc); exits 1 with the reason on stderr if a call broke.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"time"
)

const mib = 1 << 20

// pattern: byte i is (i*31 + seed*7 + i/251) % 251, as in fixtures.hh.
func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*31 + seed*7 + i/251) % 251)
	}
	return b
}

// echoRequest: an EchoRequest{payload} (tools/echo/echo.proto) in a gRPC frame.
func echoRequest(payload []byte) []byte {
	msg := append([]byte{0x0a}, binary.AppendUvarint(nil, uint64(len(payload)))...)
	msg = append(msg, payload...)
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return append(frame, msg...)
}

// replyPayload: EchoReply.payload (field 1) from a gRPC body of one message.
func replyPayload(body []byte) ([]byte, error) {
	if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
		return nil, fmt.Errorf("not one uncompressed gRPC message (%d bytes)", len(body))
	}
	msg := body[5:]
	var payload []byte
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return nil, errors.New("bad protobuf key")
		}
		msg = msg[n:]
		switch key & 7 {
		case 0:
			if _, n = binary.Uvarint(msg); n <= 0 {
				return nil, errors.New("bad protobuf varint")
			}
			msg = msg[n:]
		case 2:
			l, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < l {
				return nil, errors.New("bad protobuf length")
			}
			if key>>3 == 1 {
				payload = msg[n : n+int(l)]
			}
			msg = msg[n+int(l):]
		default:
			return nil, fmt.Errorf("protobuf wire type %d", key&7)
		}
	}
	return payload, nil
}

var versions = map[uint16]string{tls.VersionTLS12: "TLS1.2", tls.VersionTLS13: "TLS1.3"}

func main() {
	port := flag.Int("port", 0, "tlsgate's port on 127.0.0.1")
	ca := flag.String("ca", "", "the test CA (PEM)")
	timeout := flag.Duration("timeout", 60*time.Second, "for everything")
	flag.Parse()

	pem, err := os.ReadFile(*ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_client:", err)
		os.Exit(1)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "go_client: no certificate in", *ca)
		os.Exit(1)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", *port)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:            roots,
			ServerName:         "localhost",
			ClientSessionCache: tls.NewLRUClientSessionCache(8),
		},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	client := &http.Client{Transport: tr, Timeout: *timeout}

	conns := 0
	call := func(name string, payload []byte) error {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				conns++
				fmt.Printf("%s.new_connection %d\n", name, conns)
			}
		}}
		req, err := http.NewRequest("POST", "https://localhost/tlsgate.test.Echo/Unary", bytes.NewReader(echoRequest(payload)))
		if err != nil {
			return err
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		req.Header.Set("content-type", "application/grpc")
		req.Header.Set("te", "trailers")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		st := resp.TLS
		fmt.Printf("%s.proto %s\n%s.status %d\n%s.grpc_status %s\n", name, resp.Proto, name, resp.StatusCode, name,
			resp.Trailer.Get("grpc-status"))
		fmt.Printf("%s.version %s\n%s.cipher %s\n%s.alpn %s\n", name, versions[st.Version], name,
			tls.CipherSuiteName(st.CipherSuite), name, st.NegotiatedProtocol)
		resumed := "no"
		if st.DidResume {
			resumed = "yes"
		}
		fmt.Printf("%s.resumed %s\n", name, resumed)
		got, err := replyPayload(body)
		verdict := "intact"
		switch {
		case err != nil:
			verdict = "unparsable: " + err.Error()
		case len(got) != len(payload):
			verdict = fmt.Sprintf("length %d, sent %d", len(got), len(payload))
		case !bytes.Equal(got, payload):
			verdict = "differs"
		}
		fmt.Printf("%s.payload_up %d\n%s.payload_down %d\n%s.echo %s\n", name, len(payload), name, len(got), name,
			verdict)
		return nil
	}

	steps := []func() error{
		func() error { return call("call1", pattern(mib, 1)) },
		func() error { return call("call2", pattern(1000, 2)) },
		func() error { tr.CloseIdleConnections(); return nil },
		func() error { return call("call3", pattern(1000, 3)) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			fmt.Fprintln(os.Stderr, "go_client:", err)
			os.Exit(1)
		}
	}
}
