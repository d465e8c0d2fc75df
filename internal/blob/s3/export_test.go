package s3

// PartsMade is how many part buffers the store has made.
func (s *Store) PartsMade() int64 { return s.bufs.made.Load() }
