package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

// Limits of S3 that shape the defaults.
const (
	// MinPartSize is S3's smallest part of a multipart upload (but the last).
	MinPartSize = 5 << 20
	// MaxURLExpiry is the longest a SigV4 presigned URL may live.
	MaxURLExpiry = 7 * 24 * time.Hour
	maxParts     = 10000
)

// Defaults of Config.
const (
	DefaultRegion      = "us-east-1"
	DefaultPartSize    = 8 << 20
	DefaultConcurrency = 2
	DefaultMaxAttempts = 5
	DefaultURLExpiry   = MaxURLExpiry
)

// Addressing styles of Config.Addressing.
const (
	AddressingAuto    = ""        // virtual host on amazonaws.com, path style elsewhere
	AddressingPath    = "path"    // https://endpoint/bucket/key
	AddressingVirtual = "virtual" // https://bucket.endpoint/key
)

// Config configures a Store. The zero value of each optional field is its
// default.
type Config struct {
	// Endpoint is the service's URL (worker-comfyui's BUCKET_ENDPOINT_URL).
	// An AWS virtual-host endpoint, https://<bucket>.s3.<region>.amazonaws.com,
	// also gives Bucket and Region when they are empty, as worker-comfyui's
	// endpoints do.
	Endpoint string
	// Region signs the requests; default: the region in an AWS endpoint,
	// else DefaultRegion.
	Region string
	// AccessKeyID and SecretAccessKey are required. Secret.
	AccessKeyID     string
	SecretAccessKey string
	// Bucket holds the objects; required unless Endpoint names it.
	Bucket string
	// Prefix goes before every key, without leading or trailing slashes
	// (BUCKET_PREFIX).
	Prefix string
	// Addressing is AddressingAuto, AddressingPath or AddressingVirtual.
	Addressing string
	// PublicBaseURL, when set, makes URL return PublicBaseURL/<key> (a CDN
	// or a public bucket) instead of a presigned GET.
	PublicBaseURL string
	// URLExpiry is how long a presigned GET lives; default and maximum
	// 7 days.
	URLExpiry time.Duration
	// PartSize is the size of each part of a multipart upload; default
	// DefaultPartSize, at least MinPartSize. A body smaller than one part is
	// sent with a single PUT.
	PartSize int64
	// Concurrency is how many parts of one upload are sent at once;
	// default DefaultConcurrency.
	Concurrency int
	// MaxAttempts bounds the SDK's tries of each request (with backoff);
	// default DefaultMaxAttempts.
	MaxAttempts int
	// HTTPClient makes the requests; nil means the SDK's default.
	HTTPClient *http.Client

	// guarded marks the store of a request's s3Config (ForRequest): its
	// client is an SSRF guard's, a refused address is not retried, and its
	// errors carry no text of the endpoint's.
	guarded bool
}

var awsEndpoint = regexp.MustCompile(`^(?:([a-z0-9][a-z0-9.-]*)\.)?s3[.-](?:([a-z0-9-]+)\.)?amazonaws\.com$`)

// resolve fills in what an AWS endpoint implies and trims the prefix.
func (c Config) resolve() Config {
	c.Prefix = strings.Trim(c.Prefix, "/")
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return c
	}
	if m := awsEndpoint.FindStringSubmatch(strings.ToLower(u.Hostname())); m != nil {
		if c.Region == "" && m[2] != "" {
			c.Region = m[2]
		}
		if m[1] != "" && c.Bucket == "" {
			// https://<bucket>.s3.<region>.amazonaws.com: the bucket is in
			// the host; the service endpoint is the rest.
			c.Bucket = m[1]
			u.Host = strings.TrimPrefix(u.Host, m[1]+".")
			c.Endpoint = u.String()
		}
		if c.Addressing == AddressingAuto {
			c.Addressing = AddressingVirtual
		}
	}
	if c.Addressing == AddressingAuto {
		c.Addressing = AddressingPath
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.URLExpiry == 0 {
		c.URLExpiry = DefaultURLExpiry
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	return c
}

// Validate reports the first field that cannot work, by its
// worker-comfyui / RunPod name where it has one. Secrets are never echoed.
func (c Config) Validate() error {
	if c.Endpoint == "" {
		return errors.New("endpoint URL is empty")
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return errors.New("endpoint URL does not parse: want http(s)://host[:port]")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("endpoint URL %s: want http(s)://host[:port]", ssrf.Redact(u))
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return fmt.Errorf("endpoint URL %s: want http(s)://host[:port][/path], without user info, query or fragment", ssrf.Redact(u))
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return errors.New("credentials missing: both the access key id and the secret access key are required")
	}
	r := c.resolve()
	if r.Bucket == "" {
		return fmt.Errorf("bucket name is empty and endpoint %s does not name one", ssrf.Redact(u))
	}
	switch c.Addressing {
	case AddressingAuto, AddressingPath, AddressingVirtual:
	default:
		return fmt.Errorf("addressing style %q: want %q or %q", c.Addressing, AddressingPath, AddressingVirtual)
	}
	if c.PublicBaseURL != "" {
		if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("public base URL %s: want http(s)://host[/path]", ssrf.RedactString(c.PublicBaseURL))
		}
	}
	switch {
	case c.URLExpiry < 0 || c.URLExpiry > MaxURLExpiry:
		return fmt.Errorf("URL expiry %v: want at most %v", c.URLExpiry, MaxURLExpiry)
	case c.PartSize != 0 && c.PartSize < MinPartSize:
		return fmt.Errorf("part size %d: S3's minimum is %d", c.PartSize, MinPartSize)
	case c.Concurrency < 0:
		return fmt.Errorf("concurrency %d is negative", c.Concurrency)
	case c.MaxAttempts < 0:
		return fmt.Errorf("max attempts %d is negative", c.MaxAttempts)
	}
	return nil
}

// Store is a blob.Store in one bucket under one prefix. It is safe for
// concurrent use.
type Store struct {
	cfg     Config // resolved
	given   Config // as given to New
	client  *awss3.Client
	presign *awss3.PresignClient
	bufs    *parts
}

// parts are a store's part buffers. Concurrency+1 of them (one upload's
// worth) are kept for the next upload; uploads that overlap make more,
// dropped when they return. Unlike a sync.Pool, a garbage collection never
// empties it: a long upload under frequent collections would otherwise
// make its buffers again (PartSize each) while the dropped ones wait to be
// freed, doubling the worker's memory at the worst moment.
type parts struct {
	size int64
	free chan *[]byte
	made atomic.Int64 // buffers made, for tests
}

func newParts(size int64, keep int) *parts {
	return &parts{size: size, free: make(chan *[]byte, keep)}
}

func (p *parts) get() *[]byte {
	select {
	case b := <-p.free:
		return b
	default:
		p.made.Add(1)
		b := make([]byte, p.size)
		return &b
	}
}

func (p *parts) put(b *[]byte) {
	select {
	case p.free <- b:
	default:
	}
}

var _ blob.Store = (*Store)(nil)

// New checks cfg and builds the store. It does not contact the service.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	given := cfg
	cfg = cfg.resolve()
	opts := awss3.Options{
		Region:                     cfg.Region,
		BaseEndpoint:               aws.String(cfg.Endpoint),
		UsePathStyle:               cfg.Addressing == AddressingPath,
		Credentials:                credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
		RetryMaxAttempts:           cfg.MaxAttempts,
		RetryMode:                  aws.RetryModeStandard,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if cfg.HTTPClient != nil {
		opts.HTTPClient = cfg.HTTPClient
	}
	if cfg.guarded {
		// A refused address stays refused: no retries.
		opts.Retryer = retry.NewStandard(func(o *retry.StandardOptions) {
			o.Retryables = append([]retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
				var r *ssrf.Refusal
				if errors.As(err, &r) {
					return aws.FalseTernary
				}
				return aws.UnknownTernary
			})}, o.Retryables...)
		})
	}
	client := awss3.New(opts)
	s := &Store{cfg: cfg, given: given, client: client, presign: awss3.NewPresignClient(client)}
	s.bufs = newParts(cfg.PartSize, cfg.Concurrency+1)
	return s, nil
}

// Bucket is the store's bucket.
func (s *Store) Bucket() string { return s.cfg.Bucket }

// Key is the object key of a blob key: the prefix, a slash, the key.
func (s *Store) Key(key string) string {
	if s.cfg.Prefix == "" {
		return key
	}
	return s.cfg.Prefix + "/" + key
}

// Put streams r to the object Key(key) with the given content type. A body
// that fits in one part goes up in one PUT; a larger one as a multipart
// upload, aborted if anything fails. The SDK retries each request.
func (s *Store) Put(ctx context.Context, key, mime string, r io.Reader) (blob.Info, error) {
	full := s.Key(key)
	first := s.bufs.get()
	n, err := fill(r, *first)
	switch {
	case errors.Is(err, io.EOF):
		defer s.bufs.put(first)
		in := &awss3.PutObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(full),
			Body: bytes.NewReader((*first)[:n]), ContentLength: aws.Int64(int64(n))}
		if mime != "" {
			in.ContentType = aws.String(mime)
		}
		if _, err := s.client.PutObject(ctx, in); err != nil {
			return blob.Info{}, s.translate("put", full, err)
		}
		return blob.Info{Key: full, Size: int64(n), Mime: mime}, nil
	case err != nil:
		s.bufs.put(first)
		return blob.Info{}, fmt.Errorf("put %s: read body: %w", full, err)
	}
	size, err := s.multipart(ctx, full, mime, first, r)
	if err != nil {
		return blob.Info{}, err
	}
	return blob.Info{Key: full, Size: size, Mime: mime}, nil
}

// multipart uploads first (a full part) and the rest of r in parts, at most
// Concurrency at a time, each from a pooled buffer.
func (s *Store) multipart(ctx context.Context, key, mime string, first *[]byte, r io.Reader) (int64, error) {
	create := &awss3.CreateMultipartUploadInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)}
	if mime != "" {
		create.ContentType = aws.String(mime)
	}
	out, err := s.client.CreateMultipartUpload(ctx, create)
	if err != nil {
		s.bufs.put(first)
		return 0, s.translate("start multipart upload of", key, err)
	}
	uploadID := out.UploadId

	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
		wg    sync.WaitGroup
	)
	slots := make(chan struct{}, s.cfg.Concurrency)
	send := func(num int32, buf *[]byte, n int) {
		defer wg.Done()
		defer func() { <-slots }()
		defer s.bufs.put(buf)
		res, err := s.client.UploadPart(uctx, &awss3.UploadPartInput{
			Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key), UploadId: uploadID,
			PartNumber: aws.Int32(num), Body: bytes.NewReader((*buf)[:n]), ContentLength: aws.Int64(int64(n)),
		})
		if err != nil {
			cancel(s.translate(fmt.Sprintf("upload part %d of", num), key, err))
			return
		}
		mu.Lock()
		parts = append(parts, types.CompletedPart{ETag: res.ETag, PartNumber: aws.Int32(num)})
		mu.Unlock()
	}

	var total int64
	var readErr error
	buf, n, last := first, len(*first), false
	for num := int32(1); ; num++ {
		if num > maxParts {
			s.bufs.put(buf)
			readErr = fmt.Errorf("more than %d parts of %d bytes", maxParts, s.cfg.PartSize)
			break
		}
		acquired := false
		select {
		case slots <- struct{}{}:
			acquired = true
		case <-uctx.Done():
		}
		if !acquired || uctx.Err() != nil {
			s.bufs.put(buf)
			break
		}
		total += int64(n)
		wg.Add(1)
		go send(num, buf, n)
		if last {
			break
		}
		buf = s.bufs.get()
		n, readErr = fill(r, *buf)
		if errors.Is(readErr, io.EOF) {
			readErr, last = nil, true
			if n == 0 {
				s.bufs.put(buf)
				break
			}
			continue
		}
		if readErr != nil {
			s.bufs.put(buf)
			break
		}
	}
	wg.Wait()
	err = context.Cause(uctx)
	if readErr != nil {
		err = fmt.Errorf("put %s: read body: %w", key, readErr)
	}
	if err == nil {
		sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
		_, err = s.client.CompleteMultipartUpload(ctx, &awss3.CompleteMultipartUploadInput{
			Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key), UploadId: uploadID,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		if err == nil {
			return total, nil
		}
		err = s.translate("complete multipart upload of", key, err)
	}
	// Leave no parts behind; this runs even when ctx ended.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer acancel()
	_, _ = s.client.AbortMultipartUpload(actx, &awss3.AbortMultipartUploadInput{
		Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key), UploadId: uploadID})
	return 0, err
}

// fill reads into buf until it is full (nil error) or r ends (io.EOF, with
// the bytes read so far). Unlike io.ReadFull it passes on every other
// error, io.ErrUnexpectedEOF of a truncated HTTP body included, so a cut
// stream is never stored as a complete object.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Get opens the object Key(key); blob.ErrNotFound when it is missing.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, blob.Info, error) {
	full := s.Key(key)
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(full)})
	if err != nil {
		return nil, blob.Info{}, s.translate("get", full, err)
	}
	info := blob.Info{Key: full, Size: aws.ToInt64(out.ContentLength), Mime: aws.ToString(out.ContentType)}
	return out.Body, info, nil
}

// Delete removes the object Key(key); a missing object is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	full := s.Key(key)
	_, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(full)})
	if err != nil {
		if err := s.translate("delete", full, err); !errors.Is(err, blob.ErrNotFound) {
			return err
		}
	}
	return nil
}

// URL is where a client downloads the object Key(key): PublicBaseURL/<key>
// when configured, else a presigned GET valid for URLExpiry.
func (s *Store) URL(ctx context.Context, key string) (string, error) {
	full := s.Key(key)
	if s.cfg.PublicBaseURL != "" {
		segs := strings.Split(full, "/")
		for i, seg := range segs {
			segs[i] = url.PathEscape(seg)
		}
		return strings.TrimRight(s.cfg.PublicBaseURL, "/") + "/" + strings.Join(segs, "/"), nil
	}
	req, err := s.presign.PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(full)},
		awss3.WithPresignExpires(s.cfg.URLExpiry))
	if err != nil {
		return "", fmt.Errorf("presign %s: %w", full, err)
	}
	return req.URL, nil
}

// EnsureBucket creates the bucket unless it exists (dev stacks and tests;
// production buckets are made by their owners).
func (s *Store) EnsureBucket(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	if err == nil {
		return nil
	}
	if err := s.translate("find bucket", s.cfg.Bucket, err); !errors.Is(err, blob.ErrNoBucket) && !errors.Is(err, blob.ErrNotFound) {
		return err
	}
	_, err = s.client.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return s.translate("create bucket", s.cfg.Bucket, err)
	}
	return nil
}

// translate turns an SDK error into one of blob's sentinels where one
// applies. The operator's store keeps the service's message; a guarded
// store (a request's endpoint, whose every word the request's author
// controls) says only the sentinel or the HTTP status, the guard's
// refusal, or the class of a transport failure.
func (s *Store) translate(op, key string, err error) error {
	if !s.cfg.guarded {
		return translate(op, key, err)
	}
	var r *ssrf.Refusal
	if errors.As(err, &r) {
		return fmt.Errorf("%s %s: %w", op, key, r)
	}
	var ae smithy.APIError
	var re interface{ HTTPStatusCode() int }
	status := 0
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	if errors.As(err, &ae) {
		if sentinel := sentinelOf(ae.ErrorCode()); sentinel != nil {
			if status != 0 {
				return fmt.Errorf("%s %s: %w (%s)", op, key, sentinel, ssrf.Status(status))
			}
			return fmt.Errorf("%s %s: %w", op, key, sentinel)
		}
	}
	if status != 0 {
		return fmt.Errorf("%s %s: the endpoint answered %s", op, key, ssrf.Status(status))
	}
	return fmt.Errorf("%s %s: %s", op, key, ssrf.Describe(err))
}

// sentinelOf is blob's sentinel for an S3 error code, nil for none.
func sentinelOf(code string) error {
	switch code {
	case "NoSuchKey", "NotFound", "NoSuchUpload":
		return blob.ErrNotFound
	case "NoSuchBucket":
		return blob.ErrNoBucket
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "AllAccessDisabled",
		"InvalidToken", "ExpiredToken":
		return blob.ErrDenied
	}
	return nil
}

// translate is the operator's store's: the sentinel and the service's
// message. A request that got no answer is said by its class alone
// (ssrf.AddressFree): the SDK's text names the endpoint's URL, and these
// errors reach a job's submitter.
func translate(op, key string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if sentinel := sentinelOf(ae.ErrorCode()); sentinel != nil {
			msg := ae.ErrorMessage()
			if msg == "" {
				msg = ae.ErrorCode()
			}
			return fmt.Errorf("%s %s: %w: %s", op, key, sentinel, msg)
		}
	}
	var re interface{ HTTPStatusCode() int }
	if !errors.As(err, &re) || re.HTTPStatusCode() == 0 {
		return fmt.Errorf("%s %s: %w", op, key, ssrf.WithoutAddresses(err))
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}
