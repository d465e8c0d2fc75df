// Package flagenv binds each setting of a binary to a command-line flag and
// an environment variable: the flag beats the environment, which beats the
// default, and a bad value fails at start naming the flag and the variable.
// --help lists every setting with its variable and default, on standard
// output; errors are one line, on standard error.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Set is a set of settings.
type Set struct {
	fs      *flag.FlagSet
	env     map[string]string // flag name -> env name
	order   []string
	summary string
	stdout  io.Writer // the help
	stderr  io.Writer // ParseOrExit's and Exit's errors
}

// New returns an empty set for the named command; summary is the first
// paragraph of its help.
func New(name, summary string) *Set {
	s := &Set{fs: flag.NewFlagSet(name, flag.ContinueOnError), env: map[string]string{}, summary: summary,
		stdout: os.Stdout, stderr: os.Stderr}
	// The flag package would print its error and then the whole help to
	// one writer; Parse returns the error alone and prints the help, when
	// asked for, itself.
	s.fs.SetOutput(io.Discard)
	s.fs.Usage = func() {}
	return s
}

// SetOutput sets where the help (--help, asked for: standard output, so
// that it pages and greps) and the errors of ParseOrExit and Exit are
// written; by default os.Stdout and os.Stderr.
func (s *Set) SetOutput(stdout, stderr io.Writer) { s.stdout, s.stderr = stdout, stderr }

// bind registers v under name and env. Binding a name again (with the same
// variable) adds v as another target of the same setting: a value given
// once goes to every target, each parsing it as its own type, and each
// target not given one keeps its own default. That lets one command (the
// dev stack) bind the settings of several components that share names
// (NATS_URL, POOL, …) with the components' own binding functions. The
// help shows the first binding's text and default.
func (s *Set) bind(name, env, usage, def string, v flag.Value) {
	f := s.fs.Lookup(name)
	if f == nil {
		s.fs.Var(v, name, usage)
		s.fs.Lookup(name).DefValue = def
		if env != "" {
			s.env[name] = env
		}
		s.order = append(s.order, name)
		return
	}
	if s.env[name] != env {
		panic(fmt.Sprintf("flagenv: --%s bound to %s and to %s", name, s.env[name], env))
	}
	if mv, ok := f.Value.(*multiValue); ok {
		mv.vs = append(mv.vs, v)
		return
	}
	f.Value = &multiValue{vs: []flag.Value{f.Value, v}}
}

// String binds a string setting.
func (s *Set) String(p *string, name, env, def, usage string) {
	*p = def
	s.bind(name, env, usage, def, (*stringValue)(p))
}

// Int binds an integer setting.
func (s *Set) Int(p *int, name, env string, def int, usage string) {
	*p = def
	s.bind(name, env, usage, strconv.Itoa(def), (*intValue)(p))
}

// Int64 binds a 64-bit integer setting (sizes in bytes).
func (s *Set) Int64(p *int64, name, env string, def int64, usage string) {
	*p = def
	s.bind(name, env, usage, strconv.FormatInt(def, 10), (*int64Value)(p))
}

// Bool binds a boolean setting ("true"/"false", "1"/"0", any case).
func (s *Set) Bool(p *bool, name, env string, def bool, usage string) {
	*p = def
	s.bind(name, env, usage, strconv.FormatBool(def), &boolValue{p: p})
}

// Duration binds a duration setting written the Go way ("1m30s").
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	s.bind(name, env, usage, def.String(), (*durationValue)(p))
}

// Seconds binds a duration written as a number of seconds ("3", "0.5"),
// as worker-comfyui's *_S variables are.
func (s *Set) Seconds(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	s.bind(name, env, usage, strconv.FormatFloat(def.Seconds(), 'f', -1, 64), &secondsValue{p: p})
}

// List binds a comma-separated list; a repeated flag appends.
func (s *Set) List(p *[]string, name, env string, def []string, usage string) {
	*p = def
	s.bind(name, env, usage, strings.Join(def, ","), &listValue{p: p})
}

// Repeated binds a setting given once per value (--set a=1 --set b=2):
// each value is kept whole, commas included, unlike List. Its variable,
// if it has one, holds a single value.
func (s *Set) Repeated(p *[]string, name, env, usage string) {
	s.bind(name, env, usage, "", &repeatedValue{p: p})
}

// ErrHelp is returned by Parse when -h or --help was asked for; the help
// has been printed to the standard output given to SetOutput.
var ErrHelp = flag.ErrHelp

// Parse reads args, then fills every setting not given as a flag from its
// environment variable (looked up with getenv; nil means os.Getenv). A
// bad flag is an error of one line that names it and points to --help;
// nothing is printed.
func (s *Set) Parse(args []string, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	if err := s.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.PrintUsage(s.stdout)
			return ErrHelp
		}
		return fmt.Errorf("%w (see --help)", err)
	}
	given := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range s.order {
		env, ok := s.env[name]
		if !ok || given[name] {
			continue
		}
		v := getenv(env)
		if v == "" {
			continue
		}
		reset(s.fs.Lookup(name).Value)
		if err := s.fs.Set(name, v); err != nil {
			return fmt.Errorf("setting %s (--%s): invalid value %q: %v", env, name, redactIfSecret(env, v), unwrap(err))
		}
	}
	return nil
}

// Args are the arguments left after the flags.
func (s *Set) Args() []string { return s.fs.Args() }

// PrintUsage writes the help: summary, then every setting with its flag,
// variable, default and meaning. A default is shown once: an empty one is
// not shown (the meaning says what empty does, "default: …" or "empty:
// …", where it matters).
func (s *Set) PrintUsage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nSettings (flag beats environment beats default):\n", s.summary)
	for _, name := range s.order {
		f := s.fs.Lookup(name)
		line := "  --" + name
		if env, ok := s.env[name]; ok {
			line += "  (env " + env + ")"
		}
		fmt.Fprintln(w, line)
		if f.DefValue == "" {
			fmt.Fprintf(w, "        %s\n", f.Usage)
			continue
		}
		fmt.Fprintf(w, "        %s (default %s)\n", f.Usage, f.DefValue)
	}
}

func unwrap(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

func redactIfSecret(env, v string) string {
	for _, w := range []string{"KEY", "SECRET", "TOKEN", "PASSWORD"} {
		if strings.Contains(env, w) {
			return "<redacted>"
		}
	}
	return v
}

// reset empties the lists among a setting's targets, so that a value from
// the environment replaces their defaults instead of adding to them.
func reset(v flag.Value) {
	switch v := v.(type) {
	case *listValue:
		v.reset()
	case *multiValue:
		for _, t := range v.vs {
			reset(t)
		}
	}
}

// multiValue is a setting bound to several targets.
type multiValue struct{ vs []flag.Value }

func (m *multiValue) String() string { return m.vs[0].String() }
func (m *multiValue) Set(s string) error {
	for _, v := range m.vs {
		if err := v.Set(s); err != nil {
			return err
		}
	}
	return nil
}
func (m *multiValue) IsBoolFlag() bool {
	b, ok := m.vs[0].(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

type stringValue string

func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }

type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a whole number")
	}
	*v = intValue(n)
	return nil
}

type int64Value int64

func (v *int64Value) String() string { return strconv.FormatInt(int64(*v), 10) }
func (v *int64Value) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("want a whole number")
	}
	*v = int64Value(n)
	return nil
}

type durationValue time.Duration

func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a duration such as 30s or 1m30s")
	}
	*v = durationValue(d)
	return nil
}

type boolValue struct{ p *bool }

func (b *boolValue) String() string {
	if b.p == nil {
		return "false"
	}
	return strconv.FormatBool(*b.p)
}
func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(strings.ToLower(strings.TrimSpace(s)))
	if err != nil {
		return fmt.Errorf("want true or false")
	}
	*b.p = v
	return nil
}
func (b *boolValue) IsBoolFlag() bool { return true }

type secondsValue struct{ p *time.Duration }

func (v *secondsValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatFloat(v.p.Seconds(), 'f', -1, 64)
}
func (v *secondsValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 {
		return fmt.Errorf("want a non-negative number of seconds")
	}
	*v.p = time.Duration(f * float64(time.Second))
	return nil
}

type listValue struct {
	p   *[]string
	set bool
}

func (l *listValue) reset() { *l.p, l.set = nil, true }
func (l *listValue) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}
func (l *listValue) Set(s string) error {
	if !l.set {
		*l.p, l.set = nil, true
	}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l.p = append(*l.p, part)
		}
	}
	return nil
}

type repeatedValue struct{ p *[]string }

func (r *repeatedValue) String() string {
	if r.p == nil {
		return ""
	}
	return strings.Join(*r.p, " ")
}
func (r *repeatedValue) Set(s string) error {
	*r.p = append(*r.p, s)
	return nil
}

// ParseOrExit is Parse for a main function: after --help it exits 0, and
// on a bad setting it prints "<command>: <error>" and exits 2.
func (s *Set) ParseOrExit(args []string) {
	if err := s.Parse(args, nil); err != nil {
		if errors.Is(err, ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(s.stderr, "%s: %v\n", s.fs.Name(), err)
		os.Exit(2)
	}
}

// Exit reports a setting that passed parsing but failed validation, the
// way ParseOrExit does, and exits 2.
func (s *Set) Exit(setting string, err error) {
	fmt.Fprintf(s.stderr, "%s: %s: %v\n", s.fs.Name(), setting, err)
	os.Exit(2)
}

// Fail reports an error that ended the command after its settings were
// read, as one line "<command>: <error>" on standard error (Explain's),
// never a log record with a stack, and exits 1.
func (s *Set) Fail(err error) {
	fmt.Fprintf(s.stderr, "%s: %s\n", s.fs.Name(), Explain(err))
	os.Exit(1)
}

// Explain is err's text on one line, with what to do about the failures
// a person meets at start: an address in use.
func Explain(err error) string {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "listen" && errors.Is(err, syscall.EADDRINUSE) {
		msg += " (another process listens there, perhaps another comfyfleet: stop it or choose another address)"
	}
	return msg
}

// Setting describes one setting, for documentation and its tests.
type Setting struct {
	Flag    string // without dashes
	Env     string // "" when the setting has no variable
	Default string
	Usage   string
}

// Settings lists the settings in the order they were bound.
func (s *Set) Settings() []Setting {
	out := make([]Setting, 0, len(s.order))
	for _, name := range s.order {
		f := s.fs.Lookup(name)
		out = append(out, Setting{Flag: name, Env: s.env[name], Default: f.DefValue, Usage: f.Usage})
	}
	return out
}
