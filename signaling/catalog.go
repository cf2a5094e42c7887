package signaling

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/vitrine-live/vitrine/overlay"
)

// maxImportBytes caps a catalog import. overlay.MaxImportRows products with
// long descriptions would need more, but a real catalog of that size is a
// few hundred KiB; the cap keeps one request from holding much memory, since
// the whole file is read before any of it is stored.
const maxImportBytes = 4 << 20

// catalogRoutes mounts the catalog API. Reads are public because viewers'
// pages show the products; every change needs the admin token.
func (s *Server) catalogRoutes(route func(string, http.HandlerFunc)) {
	route("GET /api/v1/products", s.listProducts)
	route("GET /api/v1/products/{sku}", s.getProduct)
	route("POST /api/v1/products", s.admin(s.createProduct))
	route("PUT /api/v1/products/{sku}", s.admin(s.replaceProduct))
	route("DELETE /api/v1/products/{sku}", s.admin(s.deleteProduct))
	// The more specific pattern wins over "POST /api/v1/products", and no
	// product can be created at this path since creation has no {sku}.
	route("POST /api/v1/products/import", s.admin(s.importProducts))
}

// adminView tells a public read from an admin one. An absent token is a
// viewer; a wrong one is refused rather than served the public view, so an
// operator with a stale token sees 403 instead of a catalog that seems to
// have lost its inactive products. ok is false when the answer was written.
func (s *Server) adminView(w http.ResponseWriter, r *http.Request) (isAdmin, ok bool) {
	tok, sent := bearer(r)
	if !sent {
		return false, true
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
		writeError(w, http.StatusForbidden, "forbidden", "wrong admin token")
		return false, false
	}
	return true, true
}

// listProducts answers {"products": [...]} by SKU. Inactive products are the
// merchant's drafts (a drop not yet revealed, an item withdrawn): only the
// admin sees them.
func (s *Server) listProducts(w http.ResponseWriter, r *http.Request) {
	isAdmin, ok := s.adminView(w, r)
	if !ok {
		return
	}
	all, err := s.store.Products(r.Context())
	if err != nil {
		s.internalError(w, "list products", err)
		return
	}
	out := make([]overlay.Product, 0, len(all))
	for _, p := range all {
		if p.Active || isAdmin {
			out = append(out, p)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"products": out})
}

// getProduct hides inactive products from the public like listProducts, with
// the same 404 an unknown SKU gets, so drafts cannot be found by guessing.
func (s *Server) getProduct(w http.ResponseWriter, r *http.Request) {
	isAdmin, ok := s.adminView(w, r)
	if !ok {
		return
	}
	p, err := s.store.Product(r.Context(), r.PathValue("sku"))
	switch {
	case errors.Is(err, overlay.ErrNotFound) || err == nil && !p.Active && !isAdmin:
		writeError(w, http.StatusNotFound, "unknown_product", "no product with this SKU")
	case err != nil:
		s.internalError(w, "get product", err)
	default:
		writeJSON(w, http.StatusOK, p)
	}
}

// invalidProduct answers 400 when err is a validation problem and reports
// whether it was one. The store validates too; checking first keeps the
// answer independent of how a store words its errors.
func invalidProduct(w http.ResponseWriter, err error) bool {
	var fe *overlay.FieldError
	if !errors.As(err, &fe) {
		return false
	}
	writeError(w, http.StatusBadRequest, "invalid", fe.Error())
	return true
}

func (s *Server) createProduct(w http.ResponseWriter, r *http.Request) {
	var in overlay.ProductInput
	if !readJSON(w, r, &in) {
		return
	}
	p := in.Product()
	if invalidProduct(w, overlay.ValidateProduct(p)) {
		return
	}
	created, err := s.store.CreateProduct(r.Context(), p)
	if errors.Is(err, overlay.ErrExists) {
		writeError(w, http.StatusConflict, "product_exists", "a product with SKU "+p.SKU+" exists; PUT /api/v1/products/"+p.SKU+" replaces it")
		return
	}
	if err != nil {
		if !invalidProduct(w, err) {
			s.internalError(w, "create product", err)
		}
		return
	}
	// SKUs are limited to URL-safe characters, so the SKU goes into the
	// path as it is.
	w.Header().Set("Location", "/api/v1/products/"+created.SKU)
	writeJSON(w, http.StatusCreated, created)
}

// replaceProduct is a full replace: a field left out takes its zero value
// (active excepted, see overlay.ProductInput). The SKU comes from the path; a body
// that names another one is refused rather than renaming the product.
func (s *Server) replaceProduct(w http.ResponseWriter, r *http.Request) {
	var in overlay.ProductInput
	if !readJSON(w, r, &in) {
		return
	}
	sku := r.PathValue("sku")
	if in.SKU != "" && in.SKU != sku {
		writeError(w, http.StatusBadRequest, "invalid", "sku: the body's "+strconv.Quote(in.SKU)+" differs from the path's "+strconv.Quote(sku)+"; a SKU cannot be changed")
		return
	}
	in.SKU = sku
	p := in.Product()
	if invalidProduct(w, overlay.ValidateProduct(p)) {
		return
	}
	updated, err := s.store.UpdateProduct(r.Context(), p)
	if errors.Is(err, overlay.ErrNotFound) {
		writeError(w, http.StatusNotFound, "unknown_product", "no product with this SKU; POST /api/v1/products creates one")
		return
	}
	if err != nil {
		if !invalidProduct(w, err) {
			s.internalError(w, "replace product", err)
		}
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

func (s *Server) deleteProduct(w http.ResponseWriter, r *http.Request) {
	err := s.store.DeleteProduct(r.Context(), r.PathValue("sku"))
	switch {
	case errors.Is(err, overlay.ErrNotFound):
		writeError(w, http.StatusNotFound, "unknown_product", "no product with this SKU")
	case err != nil:
		s.internalError(w, "delete product", err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// importProducts creates or replaces products from a JSON array or a CSV
// file in one transaction. The whole file is checked before anything is
// stored, so a merchant fixes the rows named in the answer and sends the
// same file again, without having to work out what got in.
func (s *Server) importProducts(w http.ResponseWriter, r *http.Request) {
	var parse func(io.Reader) ([]overlay.Product, error)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		parse = overlay.ParseCatalogJSON
	case "text/csv":
		parse = overlay.ParseCatalogCSV
	default:
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send a JSON array of products as application/json or a CSV file as text/csv")
		return
	}
	// Read all of it first: a body cut off at the cap must be refused as
	// too large, not parsed as a shorter catalog or reported as a bad row.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxImportBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "catalog over 4 MiB; split it into several imports")
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_body", "reading the body: "+err.Error())
		return
	}
	ps, err := parse(bytes.NewReader(body))
	if err != nil {
		badImport(w, err)
		return
	}
	if err := s.store.ImportProducts(r.Context(), ps); err != nil {
		var re *overlay.RowError
		if errors.As(err, &re) {
			badImport(w, err)
			return
		}
		s.internalError(w, "import products", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"imported": len(ps)})
}

// badImport answers a catalog that was refused. Row problems get their own
// code so a client can tell "fix these rows" from "this is not a catalog".
// The rows are listed on one line, which reads better in a terminal and a
// log than the newlines errors.Join puts between them.
func badImport(w http.ResponseWriter, err error) {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	var re *overlay.RowError
	if errors.As(err, &re) {
		writeError(w, http.StatusBadRequest, "invalid_row", msg)
		return
	}
	writeError(w, http.StatusBadRequest, "invalid", msg)
}
