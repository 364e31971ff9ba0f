// Package atomicfile replaces small state files whole: a reader, or a
// restart after a crash, sees the old content or the new, never a mix.
package atomicfile

import "os"

// Write writes data to path + ".tmp", then renames it over path. It does
// not fsync: the files it serves are hints or are rebuilt on loss.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
