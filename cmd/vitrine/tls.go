package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// tlsFor is the HTTPS configuration of cfg, nil for plain HTTP. With ACME
// it also starts the plain-HTTP listener that answers ACME's HTTP
// challenge and redirects everything else to HTTPS; stop closes it.
func tlsFor(cfg Config, log *slog.Logger) (conf *tls.Config, stop func(), err error) {
	stop = func() {}
	switch {
	case cfg.TLS.CertFile != "":
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, stop, fmt.Errorf("tls: load %s and %s: %w", cfg.TLS.CertFile, cfg.TLS.KeyFile, err)
		}
		return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, stop, nil
	case len(cfg.TLS.ACMEDomains) > 0:
		var domains []string
		for _, d := range cfg.TLS.ACMEDomains {
			if d = strings.TrimSpace(d); d != "" {
				domains = append(domains, d)
			}
		}
		m := &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			HostPolicy: autocert.HostWhitelist(domains...),
			Cache:      autocert.DirCache(filepath.Join(cfg.Data, "acme")),
			Email:      cfg.TLS.ACMEEmail,
		}
		directory := cfg.TLS.ACMEDirectory
		if directory == "" {
			directory = autocert.DefaultACMEDirectory
		}
		m.Client = &acme.Client{DirectoryURL: directory}
		if cfg.TLS.ACMEHTTP != "" {
			ln, err := net.Listen("tcp", cfg.TLS.ACMEHTTP)
			if err != nil {
				return nil, stop, fmt.Errorf("tls: ACME's HTTP listener %s: %w", cfg.TLS.ACMEHTTP, err)
			}
			srv := &http.Server{Handler: m.HTTPHandler(nil), ReadHeaderTimeout: 10 * time.Second}
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					log.Error("ACME HTTP listener stopped", "err", err)
				}
			}()
			stop = func() { srv.Close() }
		}
		conf := m.TLSConfig()
		conf.MinVersion = tls.VersionTLS12
		log.Info("tls: certificates from ACME", "directory", directory, "domains", domains, "cache", filepath.Join(cfg.Data, "acme"))
		return conf, stop, nil
	}
	return nil, stop, nil
}
