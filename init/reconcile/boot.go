package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/stackfile"
)

// Origin says where the boot revision came from.
type Origin string

const (
	FromSource   Origin = "source"    // fetched from the config source
	FromLastGood Origin = "last-good" // the store's last good revision
	FromBuiltin  Origin = "builtin"   // the embedded default stack
)

// Initial picks the revision a host boots with: the config source's current
// revision if it can be fetched and is valid, else the last good revision
// from the store (the repository may be unreachable after a reboot), else
// the built-in default stack. An invalid fetched revision is recorded as
// rejected. source "" skips the fetch; fetcher and store may be nil.
// The returned revision and stack are always usable; a non-nil error says
// why a better origin was passed over (for the console and status).
func Initial(ctx context.Context, log *slog.Logger, fetcher *configsource.Fetcher, source string, store *configstore.Store) (configsource.Revision, *stackfile.Stack, Origin, error) {
	if log == nil {
		log = slog.Default()
	}
	var problems []error
	if source != "" && fetcher != nil {
		// The last good revision's signers bind what boot accepts, as they
		// bind every later poll: whoever can answer for the source's
		// address must not change the stack by rebooting a host.
		if keys := lastGoodSigners(store); len(keys) > 0 {
			fetcher = fetcher.WithSignedBy(keys)
		}
		rev, err := fetcher.Fetch(ctx, source)
		if err == nil {
			s, perr := stackfile.Parse(fileName(rev), rev.Data)
			if perr == nil {
				return rev, s, FromSource, nil
			}
			err = fmt.Errorf("revision %s is invalid: %w", short(rev.ID), perr)
			if store != nil {
				if serr := store.MarkRejected(rev, perr); serr != nil {
					log.Error("config store: cannot record rejected revision", "err", serr)
				}
			}
		}
		log.Warn("config source not usable at boot; falling back", "source", source, "err", err)
		problems = append(problems, err)
	}
	if store != nil {
		rev, err := store.LastGood()
		if err == nil {
			s, perr := stackfile.Parse(fileName(rev), rev.Data)
			if perr == nil {
				return rev, s, FromLastGood, errors.Join(problems...)
			}
			err = fmt.Errorf("last good revision %s no longer parses: %w", short(rev.ID), perr)
		}
		if !errors.Is(err, configstore.ErrNoRevision) {
			log.Warn("last good config not usable", "err", err)
			problems = append(problems, err)
		}
	}
	rev := BuiltinRevision()
	return rev, stackfile.Default(), FromBuiltin, errors.Join(problems...)
}

// lastGoodSigners is config.signedby of the store's last good revision
// (nil without one).
func lastGoodSigners(store *configstore.Store) []string {
	if store == nil {
		return nil
	}
	rev, err := store.LastGood()
	if err != nil {
		return nil
	}
	s, err := stackfile.Parse(fileName(rev), rev.Data)
	if err != nil {
		return nil
	}
	return s.Config.SignedBy
}

// PollSettings says where and how a host polls for new revisions once it
// runs stack s: config.source when the stack names one, else the source it
// booted from (magestack.config=); every config.poll; accepting only
// commits signed by config.signedby when that is set. source "" means
// nothing to poll (a built-in or embedded stack).
func PollSettings(s *stackfile.Stack, bootSource string, base configsource.Options) (source string, interval time.Duration, fetcher *configsource.Fetcher) {
	source = bootSource
	if s.Config.Source != "" {
		source = s.Config.Source
	}
	opts := base
	if len(s.Config.SignedBy) > 0 {
		opts.SignedBy = slices.Clone(s.Config.SignedBy)
	}
	return source, s.Config.Poll.D(), configsource.New(opts)
}
