package comfysim

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	// Decoders GET /view needs for ?channel= and ?preview= (image/jpeg,
	// imported above, registers the third).
	_ "image/gif"
	_ "image/png"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// Python path helpers (posixpath semantics).

func pyDirname(p string) string {
	i := strings.LastIndexByte(p, '/') + 1
	head := p[:i]
	if head != "" && strings.Trim(head, "/") != "" {
		head = strings.TrimRight(head, "/")
	}
	return head
}

func pyBasename(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}

// pyJoin is os.path.join for two parts.
func pyJoin(a, b string) string {
	if strings.HasPrefix(b, "/") {
		return b
	}
	if a == "" || strings.HasSuffix(a, "/") {
		return a + b
	}
	return a + "/" + b
}

// pyNormpath is os.path.normpath (filepath.Clean except for "//" prefixes).
func pyNormpath(p string) string {
	if p == "" {
		return "."
	}
	return filepath.Clean(p)
}

func pyAbspath(p string) string {
	if !strings.HasPrefix(p, "/") {
		wd, _ := os.Getwd()
		p = pyJoin(wd, p)
	}
	return pyNormpath(p)
}

// pyCommonpath is os.path.commonpath for two absolute paths.
func pyCommonpath(a, b string) string {
	as := strings.Split(strings.Trim(pyNormpath(a), "/"), "/")
	bs := strings.Split(strings.Trim(pyNormpath(b), "/"), "/")
	var common []string
	for k := 0; k < len(as) && k < len(bs); k++ {
		if as[k] != bs[k] {
			break
		}
		common = append(common, as[k])
	}
	out := "/" + strings.Join(common, "/")
	return strings.ReplaceAll(out, "//", "/")
}

// pySplitext is os.path.splitext (leading dots of the base name do not start
// an extension).
func pySplitext(p string) (string, string) {
	base := pyBasename(p)
	dot := strings.LastIndexByte(base, '.')
	if dot <= 0 || strings.Trim(base[:dot], ".") == "" {
		return p, ""
	}
	cut := len(p) - len(base) + dot
	return p[:cut], p[cut:]
}

// withinDir is folder_paths.is_within_directory.
func withinDir(dir, target string) bool {
	dir, target = pyAbspath(dir), pyAbspath(target)
	return pyCommonpath(dir, target) == dir
}

// annotated splits a "name [output]" annotation (folder_paths.annotated_filepath).
func (s *Server) annotated(name string) (string, string) {
	cut := func(n int) string {
		r := []rune(name)
		if len(r) < n {
			return ""
		}
		return string(r[:len(r)-n])
	}
	switch {
	case strings.HasSuffix(name, "[output]"):
		return cut(9), s.outputDir
	case strings.HasSuffix(name, "[input]"):
		return cut(8), s.inputDir
	case strings.HasSuffix(name, "[temp]"):
		return cut(7), s.tempDir
	}
	return name, ""
}

// annotatedPath is folder_paths.get_annotated_filepath.
func (s *Server) annotatedPath(name, defaultDir string) (string, error) {
	n, base := s.annotated(name)
	if base == "" {
		base = defaultDir
	}
	p := pyAbspath(pyJoin(base, n))
	if !withinDir(base, p) {
		return "", errors.New("invalid file path")
	}
	return p, nil
}

// annotatedExists is folder_paths.exists_annotated_filepath.
func (s *Server) annotatedExists(name string) bool {
	p, err := s.annotatedPath(name, s.inputDir)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// inputImages is LoadImage's combo: the image files in input/ (root only),
// sorted.
func (s *Server) inputImages() []string {
	ents, err := os.ReadDir(s.inputDir)
	if err != nil {
		return []string{}
	}
	out := []string{}
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(guessMime(e.Name()), "image/") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// guessMime is mimetypes.guess_type for the extensions ComfyUI users meet.
func guessMime(name string) string {
	ext := strings.ToLower(filepath.Ext(name))
	switch ext {
	case ".png":
		return "image/png"
	case ".jpg", ".jpeg", ".jpe":
		return "image/jpeg"
	case ".gif":
		return "image/gif"
	case ".webp":
		return "image/webp"
	case ".bmp":
		return "image/bmp"
	case ".tif", ".tiff":
		return "image/tiff"
	case ".ico":
		return "image/vnd.microsoft.icon"
	case ".svg":
		return "image/svg+xml"
	case ".avif":
		return "image/avif"
	case ".mp4":
		return "video/mp4"
	case ".webm":
		return "video/webm"
	case ".mov":
		return "video/quicktime"
	case ".mkv":
		return "video/x-matroska"
	case ".flac":
		return "audio/flac"
	case ".wav":
		return "audio/x-wav"
	case ".mp3":
		return "audio/mpeg"
	case ".opus":
		return "audio/opus"
	case ".ogg":
		return "audio/ogg"
	case ".json":
		return "application/json"
	case ".txt":
		return "text/plain"
	case ".html", ".htm":
		return "text/html"
	case ".js", ".mjs":
		return "text/javascript"
	case ".css":
		return "text/css"
	case ".xml":
		return "text/xml"
	case ".glb":
		return "model/gltf-binary"
	case ".gltf":
		return "model/gltf+json"
	case ".obj":
		return "model/obj"
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return strings.TrimSpace(strings.SplitN(t, ";", 2)[0])
	}
	return ""
}

// isDangerousContentType is folder_paths.is_dangerous_content_type.
func isDangerousContentType(ct string) bool {
	n := strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	switch n {
	case "text/html", "application/xhtml+xml", "text/javascript", "application/javascript", "application/x-javascript",
		"text/css", "image/svg+xml", "text/xml", "application/xml":
		return true
	}
	return strings.HasSuffix(n, "+xml") || strings.HasSuffix(n, "/xml")
}

// counterKey identifies one file-name sequence in a folder.
type counterKey struct {
	filename  string
	prefixLen int
}

// sequenceKey is the file-name sequence sp's files belong to.
func sequenceKey(sp node.SavePath) counterKey {
	return counterKey{filename: sp.Filename, prefixLen: utf8.RuneCountInString(pyBasename(sp.Prefix))}
}

// counterCache remembers the next counter of each sequence so a save does not
// list a folder of thousands of files. An entry is trusted only while the
// folder's modification time is the one seen when it was stored, so files
// added or removed by anyone else force a fresh listing, as in ComfyUI.
type counterCache struct {
	mu   sync.Mutex
	dirs map[string]*dirCounters
}

type dirCounters struct {
	mtime time.Time
	next  map[counterKey]int64
}

func newCounterCache() *counterCache {
	return &counterCache{dirs: map[string]*dirCounters{}}
}

func (c *counterCache) lookup(folder string, k counterKey) (int64, bool) {
	if c == nil {
		return 0, false
	}
	st, err := os.Stat(folder)
	if err != nil {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirs[filepath.Clean(folder)]
	if d == nil || !d.mtime.Equal(st.ModTime()) {
		return 0, false
	}
	n, ok := d.next[k]
	return n, ok
}

func (c *counterCache) store(folder string, k counterKey, next int64, mtime time.Time) {
	if c == nil {
		return
	}
	folder = filepath.Clean(folder)
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirs[folder]
	if d == nil || !d.mtime.Equal(mtime) {
		d = &dirCounters{mtime: mtime, next: map[counterKey]int64{}}
		c.dirs[folder] = d
	}
	d.next[k] = next
}

// forget drops what is known of a folder (after a write that bypassed the
// cache within the same timestamp tick).
func (c *counterCache) forget(folder string) {
	c.mu.Lock()
	delete(c.dirs, filepath.Clean(folder))
	c.mu.Unlock()
}

func (c *counterCache) reset() {
	c.mu.Lock()
	c.dirs = map[string]*dirCounters{}
	c.mu.Unlock()
}

// wrote records that the files of sp up to next-1 now exist.
func (c *counterCache) wrote(sp node.SavePath, next int64) {
	if c == nil {
		return
	}
	st, err := os.Stat(sp.Folder)
	if err != nil {
		return
	}
	c.store(sp.Folder, sequenceKey(sp), next, st.ModTime())
}

// saveImagePath is folder_paths.get_save_image_path; where names the function
// for the traceback of the escape error. cc may be nil.
func saveImagePath(cc *counterCache, prefix, outputDir string, w, h int, where string) (node.SavePath, error) {
	if strings.Contains(prefix, "%") {
		now := time.Now()
		r := strings.NewReplacer(
			"%width%", strconv.Itoa(w), "%height%", strconv.Itoa(h),
			"%year%", strconv.Itoa(now.Year()), "%month%", fmt.Sprintf("%02d", int(now.Month())),
			"%day%", fmt.Sprintf("%02d", now.Day()), "%hour%", fmt.Sprintf("%02d", now.Hour()),
			"%minute%", fmt.Sprintf("%02d", now.Minute()), "%second%", fmt.Sprintf("%02d", now.Second()),
		)
		// Python replaces one variable after the other; a NewReplacer
		// differs only for values that themselves contain '%', which
		// numbers never do.
		prefix = r.Replace(prefix)
	}
	norm := pyNormpath(prefix)
	sp := node.SavePath{Subfolder: pyDirname(norm), Filename: pyBasename(norm), Prefix: prefix}
	sp.Folder = pyJoin(outputDir, sp.Subfolder)
	abs := pyAbspath(sp.Folder)
	if cp := pyCommonpath(outputDir, abs); cp != outputDir {
		msg := "**** ERROR: Saving image outside the output folder is not allowed." +
			"\n full_output_folder: " + abs +
			"\n         output_dir: " + outputDir +
			"\n         commonpath: " + cp
		return sp, node.Raise("Exception", msg, where)
	}
	key := sequenceKey(sp)
	prefixLen := key.prefixLen
	if n, ok := cc.lookup(sp.Folder, key); ok {
		sp.Counter = n
		return sp, nil
	}
	st, statErr := os.Stat(sp.Folder)
	ents, err := os.ReadDir(sp.Folder)
	if err != nil || statErr != nil {
		if mkErr := os.MkdirAll(sp.Folder, 0o755); mkErr != nil {
			return sp, node.Raise("OSError", mkErr.Error(), where)
		}
		sp.Counter = 1
		cc.wrote(sp, 1)
		return sp, nil
	}
	best := int64(0)
	found := false
	for _, e := range ents {
		f := []rune(e.Name())
		end := prefixLen + 1
		if end > len(f) {
			end = len(f)
		}
		pfx := f[:end]
		if len(pfx) == 0 || pfx[len(pfx)-1] != '_' || string(pfx[:len(pfx)-1]) != sp.Filename {
			continue
		}
		rem := string(f[end:])
		base := strings.SplitN(rem, ".", 2)[0]
		var digits int64
		if n, err := pyvalue.Int(strings.SplitN(base, "_", 2)[0]); err == nil && n.IsInt64() {
			digits = n.Int64()
		}
		if !found || digits > best {
			best, found = digits, true
		}
	}
	sp.Counter = 1
	if found {
		sp.Counter = best + 1
	}
	cc.store(sp.Folder, key, sp.Counter, st.ModTime())
	return sp, nil
}

// --- GET /view ---

// pyQuery parses a query string the way yarl does: '&' separates pairs
// (';' is data), '+' is a space, blank values are kept; get() takes the first.
type pyQuery [][2]string

func parsePyQuery(raw string) pyQuery {
	var q pyQuery
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		ku, err1 := url.QueryUnescape(k)
		vu, err2 := url.QueryUnescape(v)
		if err1 != nil {
			ku = k
		}
		if err2 != nil {
			vu = v
		}
		q = append(q, [2]string{ku, vu})
	}
	return q
}

func (q pyQuery) first(k string) string {
	v, _ := q.get(k)
	return v
}

func (q pyQuery) get(k string) (string, bool) {
	for _, kv := range q {
		if kv[0] == k {
			return kv[1], true
		}
	}
	return "", false
}

func (s *Server) dirByType(t string) string {
	switch t {
	case "output":
		return s.outputDir
	case "temp":
		return s.tempDir
	case "input":
		return s.inputDir
	}
	return ""
}

func (s *Server) handleView(w http.ResponseWriter, r *http.Request) {
	q := parsePyQuery(r.URL.RawQuery)
	filename, ok := q.get("filename")
	if !ok || strings.HasPrefix(filename, "blake3:") {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	filename, outputDir := s.annotated(filename)
	if filename == "" || filename[0] == '/' || strings.Contains(filename, "..") {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if outputDir == "" {
		t, ok := q.get("type")
		if !ok {
			t = "output"
		}
		outputDir = s.dirByType(t)
		if outputDir == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
	}
	if sub, ok := q.get("subfolder"); ok {
		full := pyJoin(outputDir, sub)
		if pyCommonpath(pyAbspath(full), outputDir) != outputDir {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		outputDir = full
	}
	filename = pyBasename(filename)
	s.mu.Lock()
	missing := slices.Contains(s.fault.ViewNotFound, filename)
	s.mu.Unlock()
	if missing {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	file := pyJoin(outputDir, filename)
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	disposition := fmt.Sprintf("filename=\"%s\"", filename)
	channel, hasChannel := q.get("channel")
	if preview, ok := q.get("preview"); ok {
		s.servePreview(w, file, filename, preview, channel)
		return
	}
	if !hasChannel {
		channel = "rgba"
	}
	switch channel {
	case "rgb", "a":
		img, err := decodeImageFile(file)
		if err != nil {
			writeServerError(w)
			return
		}
		var out image.Image
		if channel == "rgb" {
			out = dropAlpha(img)
		} else {
			out = alphaOnly(img)
		}
		var buf bytes.Buffer
		if err := media.WritePNG(&buf, out, 6); err != nil {
			writeServerError(w)
			return
		}
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Disposition", disposition)
		_, _ = w.Write(buf.Bytes())
		return
	}
	ct := guessMime(filename)
	if ct == "" {
		ct = "application/octet-stream"
	}
	safe := strings.ReplaceAll(strings.ReplaceAll(filename, `\`, `\\`), `"`, `\"`)
	disposition = fmt.Sprintf("filename=\"%s\"", safe)
	if isDangerousContentType(ct) {
		ct = "application/octet-stream"
		disposition = "attachment; " + disposition
	}
	f, err := os.Open(file)
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Disposition", disposition)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", st.ModTime(), f)
}

func (s *Server) servePreview(w http.ResponseWriter, file, filename, preview, channel string) {
	img, err := decodeImageFile(file)
	if err != nil {
		writeServerError(w)
		return
	}
	info := strings.Split(preview, ";")
	format := info[0]
	if (format != "webp" && format != "jpeg") || strings.Contains(channel, "a") {
		format = "webp"
	}
	quality := 90
	if last := info[len(info)-1]; last != "" && isASCIIDigits(last) {
		quality, _ = strconv.Atoi(last)
	}
	var buf bytes.Buffer
	if format == "jpeg" {
		if quality < 1 {
			quality = 1
		}
		if quality > 100 {
			quality = 100
		}
		if err := jpeg.Encode(&buf, dropAlpha(img), &jpeg.Options{Quality: quality}); err != nil {
			writeServerError(w)
			return
		}
	} else {
		src := img
		if channel == "rgb" {
			src = dropAlpha(img)
		}
		buf.Write(media.EncodeWebP(toNRGBA(src)))
	}
	w.Header().Set("Content-Type", "image/"+format)
	w.Header().Set("Content-Disposition", fmt.Sprintf("filename=\"%s\"", filename))
	_, _ = w.Write(buf.Bytes())
}

func isASCIIDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

func decodeImageFile(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	return img, err
}

func toNRGBA(img image.Image) *image.NRGBA {
	if n, ok := img.(*image.NRGBA); ok {
		return n
	}
	b := img.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			out.Set(x, y, img.At(b.Min.X+x, b.Min.Y+y))
		}
	}
	return out
}

func dropAlpha(img image.Image) *image.NRGBA {
	src := toNRGBA(img)
	out := image.NewNRGBA(src.Rect)
	copy(out.Pix, src.Pix)
	for p := 3; p < len(out.Pix); p += 4 {
		out.Pix[p] = 0xff
	}
	return out
}

// alphaOnly is Image.new('RGBA') with only the alpha channel put in.
func alphaOnly(img image.Image) *image.NRGBA {
	src := toNRGBA(img)
	out := image.NewNRGBA(src.Rect)
	for p := 3; p < len(src.Pix); p += 4 {
		out.Pix[p] = src.Pix[p]
	}
	return out
}

var _ color.Color = color.NRGBA{}

// --- POST /upload/image ---

// formField is one multipart field: a file (filename set by the part) or a
// plain value.
type formField struct {
	isFile      bool
	filename    string
	contentType string
	data        []byte
}

func readMultipart(r *http.Request) (map[string]formField, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, err
	}
	fields := map[string]formField{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return fields, nil
		}
		if err != nil {
			return nil, err
		}
		name := p.FormName()
		data, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		fn := partFilename(p)
		if _, dup := fields[name]; !dup {
			fields[name] = formField{isFile: fn != nil, filename: deref(fn), contentType: p.Header.Get("Content-Type"), data: data}
		}
	}
}

// partFilename returns the filename parameter of the part's disposition, or
// nil when there is none.
func partFilename(p *multipart.Part) *string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return nil
	}
	fn, ok := params["filename"]
	if !ok {
		return nil
	}
	return &fn
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func (s *Server) handleUploadImage(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	refuse := s.fault.UploadStatus
	s.mu.Unlock()
	if refuse != 0 {
		_, _ = io.Copy(io.Discard, r.Body)
		writeStatusPage(w, refuse)
		return
	}
	fields, err := readMultipart(r)
	if err != nil {
		if isTooLarge(err) {
			writeTooLarge(w, r)
			return
		}
		writeServerError(w)
		return
	}
	img, ok := fields["image"]
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if !img.isFile {
		// post.get("image") is a str: image.file raises AttributeError.
		if len(img.data) == 0 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		writeServerError(w)
		return
	}
	uploadType := "input"
	if t, ok := fields["type"]; ok {
		if t.isFile {
			writeServerError(w)
			return
		}
		uploadType = string(t.data)
	}
	uploadDir := s.dirByType(uploadType)
	if uploadDir == "" {
		writeServerError(w) // UnboundLocalError
		return
	}
	filename := img.filename
	if filename == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	subfolder := ""
	if sf, ok := fields["subfolder"]; ok {
		subfolder = string(sf.data)
	}
	fullFolder := pyJoin(uploadDir, pyNormpath(subfolder))
	filepathAbs := pyAbspath(pyJoin(fullFolder, filename))
	if pyCommonpath(uploadDir, filepathAbs) != uploadDir {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if err := os.MkdirAll(fullFolder, 0o755); err != nil {
		writeServerError(w)
		return
	}
	overwrite := ""
	if ow, ok := fields["overwrite"]; ok {
		overwrite = string(ow.data)
	}
	target := filepathAbs
	duplicate := false
	if overwrite != "true" && overwrite != "1" {
		base, ext := pySplitext(filename)
		sum := sha256.Sum256(img.data)
		for n := 1; ; n++ {
			existing, err := os.ReadFile(target)
			if err != nil {
				if _, statErr := os.Stat(target); statErr == nil {
					// A directory or unreadable file: os.path.exists is true.
					filename = fmt.Sprintf("%s (%d)%s", base, n, ext)
					target = pyJoin(fullFolder, filename)
					continue
				}
				break
			}
			if sha256.Sum256(existing) == sum {
				duplicate = true
				break
			}
			filename = fmt.Sprintf("%s (%d)%s", base, n, ext)
			target = pyJoin(fullFolder, filename)
		}
	}
	if !duplicate {
		if err := os.WriteFile(target, img.data, 0o644); err != nil {
			writeServerError(w)
			return
		}
		s.counters.forget(pyDirname(target))
	}
	s.recordUpload(UploadRecord{Filename: img.filename, Name: filename, Subfolder: subfolder, Type: uploadType,
		ContentType: img.contentType, Overwrite: overwrite, Size: len(img.data)})
	writeJSON(w, http.StatusOK, pyvalue.NewDict("name", filename, "subfolder", subfolder, "type", uploadType))
}

func bigOrNil(s string, ok bool) (*big.Int, error) {
	if !ok {
		return nil, nil
	}
	return pyvalue.Int(s)
}

// writeOutput writes a file a node saves, padded with a sparse tail when the
// PadOutputsTo fault asks for large outputs.
func (s *Server) writeOutput(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	s.mu.Lock()
	pad := s.fault.PadOutputsTo
	s.mu.Unlock()
	if pad > int64(len(data)) {
		return os.Truncate(path, pad)
	}
	return nil
}
