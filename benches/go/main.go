// The go-msg side of benches/mem.rs: go-msg's in-memory pattern (a topic whose writers
// buffer the body and send the whole message on a channel at Close; a server that runs a
// goroutine per message under a semaphore) on the same workload, written here with the
// standard library only: a writer, 2 attributes with canonical keys, a 100-byte body,
// concurrency 64, the body read with io.ReadAll in the receiver.
//
// Prints one line per round: `RESULT go-msg <msgs/s> <cpu ns per message>`, CPU being
// the process's user+system time (getrusage) over the round.
//
//	go run ./benches/go -messages 300000 -rounds 7
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Attributes are go-msg's: canonical MIME keys, several values each.
type Attributes map[string][]string

// Set replaces the values of key.
func (a Attributes) Set(key, value string) {
	a[textproto.CanonicalMIMEHeaderKey(key)] = []string{value}
}

// Message is go-msg's: attributes and a body to read.
type Message struct {
	Attributes Attributes
	Body       io.Reader
}

// Receiver is go-msg's.
type Receiver interface {
	Receive(context.Context, *Message) error
}

// ReceiverFunc is go-msg's.
type ReceiverFunc func(context.Context, *Message) error

// Receive calls f.
func (f ReceiverFunc) Receive(ctx context.Context, m *Message) error { return f(ctx, m) }

var errClosed = errors.New("message writer is closed")

// writer buffers the body and sends the message on close, as go-msg's mem writer does.
type writer struct {
	mu     sync.Mutex
	ctx    context.Context
	attrs  Attributes
	buf    bytes.Buffer
	c      chan *Message
	closed bool
}

func (w *writer) Attributes() *Attributes { return &w.attrs }

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errClosed
	}
	return w.buf.Write(p)
}

func (w *writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	w.closed = true
	select {
	case w.c <- &Message{Attributes: w.attrs, Body: &w.buf}:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

// Topic makes writers onto a channel.
type Topic struct{ c chan *Message }

// NewWriter starts a message.
func (t *Topic) NewWriter(ctx context.Context) *writer {
	return &writer{ctx: ctx, attrs: Attributes{}, c: t.c}
}

// Server serves the channel, a goroutine per message under a semaphore.
type Server struct {
	c           chan *Message
	concurrency int
}

// Serve runs until the channel closes, then waits for the receivers.
func (s *Server) Serve(r Receiver) {
	sem := make(chan struct{}, s.concurrency)
	var wg sync.WaitGroup
	ctx := context.Background()
	for m := range s.c {
		sem <- struct{}{}
		wg.Add(1)
		go func(m *Message) {
			defer func() { <-sem; wg.Done() }()
			_ = r.Receive(ctx, m)
		}(m)
	}
	wg.Wait()
}

func cpu() time.Duration {
	var u syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// round publishes n messages and waits until the receiver read them all.
func round(n int) (rate float64, cpuPerMsg time.Duration) {
	c := make(chan *Message, 1024)
	topic := &Topic{c: c}
	server := &Server{c: c, concurrency: 64}
	var got int64
	done := make(chan struct{})
	receiver := ReceiverFunc(func(_ context.Context, m *Message) error {
		body, err := io.ReadAll(m.Body)
		if err != nil {
			return err
		}
		_ = body
		if atomic.AddInt64(&got, 1) == int64(n) {
			close(done)
		}
		return nil
	})
	served := make(chan struct{})
	go func() { server.Serve(receiver); close(served) }()

	body := bytes.Repeat([]byte{'x'}, 100)
	ctx := context.Background()
	startCPU, start := cpu(), time.Now()
	for seq := 0; seq < n; seq++ {
		w := topic.NewWriter(ctx)
		w.Attributes().Set("content-type", "text/plain")
		w.Attributes().Set("x-seq", strconv.Itoa(seq))
		if _, err := w.Write(body); err != nil {
			panic(err)
		}
		if err := w.Close(); err != nil {
			panic(err)
		}
	}
	<-done
	elapsed, used := time.Since(start), cpu()-startCPU
	close(c)
	<-served
	return float64(n) / elapsed.Seconds(), used / time.Duration(n)
}

func main() {
	messages := flag.Int("messages", 300000, "messages per round")
	rounds := flag.Int("rounds", 7, "rounds")
	flag.Parse()
	round(*messages / 10) // warm up
	for i := 0; i < *rounds; i++ {
		rate, perMsg := round(*messages)
		fmt.Printf("RESULT go-msg %.0f %d\n", rate, perMsg.Nanoseconds())
	}
}
