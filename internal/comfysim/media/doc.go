// Package media writes the files the emulated nodes save: PNG with tEXt
// metadata as PIL's PngInfo writes it, lossless WebP (VP8L, still and
// animated), FLAC with Vorbis comments, MP4 and WebM with Motion-JPEG
// frames, and animated GIF. The encoders are minimal but produce valid files
// that decoders accept.
//
// The encoders take plain inputs (pixels, frames, samples, metadata) and
// know nothing of nodes or of the server; what a generated image looks like
// or what a sampler's tone sounds like is decided by the node package.
package media
