// A RedisAI client written in Go on redigo, the library redisai-go is built on, sending the
// command forms redisai-go sends and reading the replies the way it reads them: float VALUES as
// bulk strings parsed with ParseFloat, integer VALUES and dims as integers, AI.INFO keys as bulk
// strings, DAG results as status "OK", arrays or bulks; a pooled connection, a pipeline of Send
// calls flushed at once, MULTI/EXEC, BLPOP and SUBSCRIBE. Exits non-zero on the first mismatch.
// Usage: client HOST:PORT GRAPH_PB (a TF graph: placeholders a, b; output mul = a * b)
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func must(reply interface{}, err error) interface{} {
	if err != nil {
		fail("unexpected error: %v", err)
	}
	return reply
}

func equal(what string, got, want interface{}) {
	if !reflect.DeepEqual(got, want) {
		fail("%s: got %#v, want %#v", what, got, want)
	}
}

// errorOf runs a command that must fail and returns its error line as Redis sent it: RedisAI
// sent some of its messages without the "ERR " code, and redigo keeps the line whole.
func errorOf(c redis.Conn, cmd string, args ...interface{}) string {
	reply, err := c.Do(cmd, args...)
	if err == nil {
		fail("%s %v: expected an error, got %#v", cmd, args, reply)
	}
	return err.Error()
}

// pairs turns a RedisAI [name, value, ...] reply into a map, as redisai-go's parsers walk it.
func pairs(reply interface{}, err error) map[string]interface{} {
	values, err := redis.Values(reply, err)
	if err != nil {
		fail("reply is not an array: %v", err)
	}
	if len(values)%2 != 0 {
		fail("odd-length reply %#v", values)
	}
	out := map[string]interface{}{}
	for i := 0; i < len(values); i += 2 {
		name, ok := values[i].([]byte) // a status name would panic in redisai-go's AI.INFO
		if !ok {
			fail("field name %#v is not a bulk string", values[i])
		}
		out[string(name)] = values[i+1]
	}
	return out
}

// tensor reads AI.TENSORGET key META VALUES the way redisai-go's ProcessTensorGetReply does.
func tensor(c redis.Conn, key string) (string, []int64, interface{}) {
	fields := pairs(c.Do("AI.TENSORGET", key, "META", "VALUES"))
	dtype := string(fields["dtype"].([]byte))
	shape := must(redis.Int64s(fields["shape"], nil)).([]int64)
	values := fields["values"].([]interface{})
	switch dtype {
	case "FLOAT":
		out := make([]float32, len(values))
		for i, v := range values {
			text, ok := v.([]byte)
			if !ok {
				fail("FLOAT value %#v is not a bulk string", v)
			}
			f, err := strconv.ParseFloat(string(text), 64)
			if err != nil {
				fail("FLOAT value %q: %v", text, err)
			}
			out[i] = float32(f)
		}
		return dtype, shape, out
	case "DOUBLE":
		return dtype, shape, must(redis.Float64s(values, nil))
	case "INT32", "INT64":
		return dtype, shape, must(redis.Int64s(values, nil))
	default: // INT8, INT16, UINT8, UINT16: redisai-go asserts int64 elements
		out := make([]int64, len(values))
		for i, v := range values {
			out[i] = v.(int64)
		}
		return dtype, shape, out
	}
}

func tensors(c redis.Conn) {
	// redigo writes a float32 with fmt.Fprint and a float64 with 'g' formatting
	args := redis.Args{}.Add("f32", "FLOAT", 2, 2, "VALUES").AddFlat([]float32{1.1, 1e-05, 1234567, float32(math.Inf(1))})
	equal("TENSORSET FLOAT", must(redis.String(c.Do("AI.TENSORSET", args...))), "OK")
	dtype, shape, values := tensor(c, "f32")
	equal("FLOAT dtype", dtype, "FLOAT")
	equal("FLOAT shape", shape, []int64{2, 2})
	equal("FLOAT values", values, []float32{1.1, 1e-05, 1234567, float32(math.Inf(1))})

	args = redis.Args{}.Add("f64", "DOUBLE", 2, "VALUES").AddFlat([]float64{1.1, 1e+06})
	must(c.Do("AI.TENSORSET", args...))
	_, _, values = tensor(c, "f64")
	equal("DOUBLE values", values, []float64{1.1, 1e+06})

	for _, dtype := range []string{"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16"} {
		args = redis.Args{}.Add("i_"+dtype, dtype, 1, 3, "VALUES").AddFlat([]int64{1, 2, 3})
		must(c.Do("AI.TENSORSET", args...))
		got, shape, values := tensor(c, "i_"+dtype)
		equal(dtype, []interface{}{got, shape, values}, []interface{}{dtype, []int64{1, 3}, []int64{1, 2, 3}})
	}

	// a []byte goes as BLOB, whatever the dtype; TENSORGET META BLOB gives it back
	blob := []byte{1, 2, 3, 4}
	must(c.Do("AI.TENSORSET", "b", "INT8", 1, 4, "BLOB", blob))
	fields := pairs(c.Do("AI.TENSORGET", "b", "META", "BLOB"))
	equal("BLOB", fields["blob"], blob)
	equal("BLOB dtype", fields["dtype"], []byte("INT8"))

	// a float32 blob, little-endian, read back as values
	var buf bytes.Buffer
	must(nil, binary.Write(&buf, binary.LittleEndian, []float32{2, 3}))
	must(c.Do("AI.TENSORSET", "fb", "FLOAT", 2, "BLOB", buf.Bytes()))
	_, _, values = tensor(c, "fb")
	equal("FLOAT from BLOB", values, []float32{2, 3})

	// no data: zeros of the shape; META META is META (redisai-go's TensorGet(key, META))
	must(c.Do("AI.TENSORSET", "z", "UINT8", 1, 2))
	equal("META META", pairs(c.Do("AI.TENSORGET", "z", "META", "META")), map[string]interface{}{
		"dtype": []byte("UINT8"), "shape": []interface{}{int64(1), int64(2)},
	})

	equal("wrong count", errorOf(c, "AI.TENSORSET", "bad", "FLOAT", 1, 10, "VALUES", 1),
		"ERR wrong number of values was given in 'AI.TENSORSET' command")
	equal("missing key", errorOf(c, "AI.TENSORGET", "nope", "META", "VALUES"),
		"ERR tensor key is empty or in a different shard")
	must(c.Do("SET", "plain", "x"))
	if !strings.HasPrefix(errorOf(c, "AI.TENSORGET", "plain", "META"), "WRONGTYPE") {
		fail("AI.TENSORGET of a string key is not WRONGTYPE")
	}
}

func models(c redis.Conn, graph []byte) {
	// redisai-go's ModelSet sends MODELSTORE with counts; TAG and batching only when set
	must(c.Do("AI.MODELSTORE", "m", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
		"BLOB", graph))
	must(c.Do("AI.MODELSTORE", "mt", "TF", "CPU", "TAG", "financialTag", "BATCHSIZE", 3,
		"MINBATCHSIZE", 1, "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul", "BLOB", graph))
	fields := pairs(c.Do("AI.MODELGET", "mt", "META", "BLOB"))
	equal("backend", must(redis.String(fields["backend"], nil)), "TF")
	equal("device", must(redis.String(fields["device"], nil)), "CPU")
	equal("tag", must(redis.String(fields["tag"], nil)), "financialTag")
	equal("batchsize", must(redis.Int64(fields["batchsize"], nil)), int64(3))
	equal("minbatchsize", must(redis.Int64(fields["minbatchsize"], nil)), int64(1))
	equal("inputs", must(redis.Strings(fields["inputs"], nil)), []string{"a", "b"})
	equal("outputs", must(redis.Strings(fields["outputs"], nil)), []string{"mul"})
	equal("blob", must(redis.Bytes(fields["blob"], nil)), graph)
	untagged := pairs(c.Do("AI.MODELGET", "m", "META"))
	equal("no tag is an empty string", must(redis.String(untagged["tag"], nil)), "")

	// AI.INFO: redisai-go keeps bulk values as text and integers through FormatInt
	info := func() map[string]string {
		out := map[string]string{}
		for name, value := range pairs(c.Do("AI.INFO", "m")) {
			switch v := value.(type) {
			case []byte:
				out[name] = string(v)
			case int64:
				out[name] = strconv.FormatInt(v, 10)
			default:
				fail("AI.INFO %s: unexpected element type %T", name, value)
			}
		}
		return out
	}
	equal("INFO before a run", info()["calls"], "0")
	must(c.Do("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", float32(1.1)))
	must(c.Do("AI.TENSORSET", "b", "FLOAT", 1, "VALUES", float32(4.4)))
	must(c.Do("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul", "TIMEOUT", 3000))
	_, _, values := tensor(c, "mul")
	equal("a * b", values, []float32{float32(float64(float32(1.1)) * float64(float32(4.4)))})
	got := info()
	equal("INFO after a run", []string{got["key"], got["device"], got["backend"], got["calls"]},
		[]string{"m", "CPU", "TF", "1"})
	equal("RESETSTAT", must(redis.String(c.Do("AI.INFO", "m", "RESETSTAT"))), "OK")
	equal("INFO after RESETSTAT", info()["calls"], "0")
	equal("RESETSTAT of nothing", errorOf(c, "AI.INFO", "notExits", "RESETSTAT"),
		"ERR cannot find run info for key")

	// a framework's own message comes without an error code, as RedisAI sent it
	equal("not an ONNX model", errorOf(c, "AI.MODELSTORE", "o", "ONNX", "CPU", "BLOB", graph),
		"No graph was found in the protobuf.")
	equal("empty blob", errorOf(c, "AI.MODELSTORE", "e", "TF", "CPU", "INPUTS", 2, "a", "b",
		"OUTPUTS", 1, "mul", "BLOB", []byte{}), `ERR Input node named "a" not found in TF graph.`)
	equal("one input of two", errorOf(c, "AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1,
		"mul"), "Number of keys given as INPUTS here does not match model definition")
	equal("missing model", errorOf(c, "AI.MODELEXECUTE", "dont:exist", "INPUTS", 2, "a", "b",
		"OUTPUTS", 1, "c"), "ERR model key is empty")
	equal("MODELDEL", must(redis.String(c.Do("AI.MODELDEL", "mt"))), "OK")
	equal("MODELDEL again", errorOf(c, "AI.MODELDEL", "mt"), "ERR model key is empty")
}

const script = `def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = int(args[0])
    redis.execute("SET", key, str(value))
    res = redis.execute("GET", key)
    return torch.tensor(int(str(res)))
`

func scripts(c redis.Conn) {
	// the deprecated SCRIPTSET takes an empty source; its entry points are an empty array
	must(c.Do("AI.SCRIPTSET", "empty", "CPU", "SOURCE", ""))
	must(c.Do("AI.SCRIPTSET", "tagged", "CPU", "TAG", "keyScriptTag", "SOURCE", ""))
	fields := pairs(c.Do("AI.SCRIPTGET", "tagged", "META", "SOURCE"))
	equal("SCRIPTGET", []interface{}{
		must(redis.String(fields["device"], nil)), must(redis.String(fields["tag"], nil)),
		must(redis.String(fields["source"], nil)), must(redis.Strings(fields["Entry Points"], nil)),
	}, []interface{}{"CPU", "keyScriptTag", "", []string{}})
	if errorOf(c, "AI.SCRIPTSET", "bad", "CPU", "SOURCE", "import abc") == "" {
		fail("a bad source gave an empty error")
	}

	must(c.Do("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 2, "bar", "int_set_get", "SOURCE",
		script))
	fields = pairs(c.Do("AI.SCRIPTGET", "s", "META", "SOURCE"))
	equal("entry points", must(redis.Strings(fields["Entry Points"], nil)),
		[]string{"bar", "int_set_get"})
	equal("no entry point", errorOf(c, "AI.SCRIPTSTORE", "s2", "CPU", "ENTRY_POINTS", 1, "foo",
		"SOURCE", script), "Function foo does not exist in the given script.")

	must(c.Do("AI.TENSORSET", "x", "FLOAT", 2, 2, "VALUES", 2, 3, 2, 3))
	must(c.Do("AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 2, "x", "x", "OUTPUTS", 1, "out"))
	_, shape, values := tensor(c, "out")
	equal("bar", []interface{}{shape, values}, []interface{}{[]int64{2, 2}, []float32{4, 6, 4, 6}})
	must(c.Do("AI.SCRIPTEXECUTE", "s", "int_set_get", "KEYS", 2, "x{1}", "{1}", "ARGS", 1, "3",
		"OUTPUTS", 1, "y{1}", "TIMEOUT", 1000))
	dtype, _, values := tensor(c, "y{1}")
	equal("int_set_get", []interface{}{dtype, values}, []interface{}{"INT64", []int64{3}})
	equal("the script's SET", must(redis.String(c.Do("GET", "x{1}"))), "3")
	// the old SCRIPTRUN: no counts
	must(c.Do("AI.SCRIPTRUN", "s", "bar", "INPUTS", "x", "x", "OUTPUTS", "out2"))
	_, _, values = tensor(c, "out2")
	equal("SCRIPTRUN", values, []float32{4, 6, 4, 6})
	equal("missing script", errorOf(c, "AI.SCRIPTRUN", "dont", "bar", "INPUTS", "x", "OUTPUTS",
		"y"), "ERR script key is empty")
	must(c.Do("AI.SCRIPTDEL", "s"))
	equal("SCRIPTDEL again", errorOf(c, "AI.SCRIPTDEL", "s"), "ERR script key is empty")
}

// dag runs a DAG command and checks each result as redisai-go's tests do: "OK" status, an array,
// or a bulk.
func dag(c redis.Conn, what string, cmd string, args ...interface{}) []interface{} {
	results, err := redis.Values(c.Do(cmd, args...))
	if err != nil {
		fail("%s: %v", what, err)
	}
	for _, result := range results {
		switch r := result.(type) {
		case string:
			equal(what+" status", r, "OK")
		case []interface{}:
			if vs, _ := redis.Strings(r, nil); len(vs) == 0 {
				fail("%s: empty values", what)
			}
		case []byte:
			if len(r) == 0 {
				fail("%s: empty blob", what)
			}
		default:
			fail("%s: unsupported result %#v", what, result)
		}
	}
	return results
}

func dags(c redis.Conn) {
	must(c.Do("AI.TENSORSET", "persisted", "FLOAT", 1, 2, "VALUES", 5, 10))
	results := dag(c, "DAGRUN", "AI.DAGRUN", "|>", "AI.TENSORSET", "a", "FLOAT", 1,
		"VALUES", float32(1.1), "|>", "AI.TENSORSET", "b", "FLOAT", 1, "VALUES", float32(4.4),
		"|>", "AI.MODELRUN", "m", "INPUTS", "a", "b", "OUTPUTS", "mul", "|>",
		"AI.TENSORGET", "mul", "BLOB")
	equal("DAGRUN results", len(results), 4)
	dag(c, "DAGRUN LOAD PERSIST", "AI.DAGRUN", "LOAD", 1, "persisted", "PERSIST", 1,
		"t1", "|>", "AI.TENSORSET", "t1", "FLOAT", 1, 2, "VALUES", 5, 10)
	results = dag(c, "DAGEXECUTE", "AI.DAGEXECUTE", "PERSIST", 1, "mytensor",
		"TIMEOUT", 1000, "|>", "AI.TENSORSET", "mytensor", "FLOAT", 1, 2, "VALUES", 5, 10, "|>",
		"AI.TENSORGET", "mytensor", "VALUES")
	equal("DAGEXECUTE values", must(redis.Strings(results[1], nil)), []string{"5", "10"})
	dag(c, "DAGEXECUTE MODELEXECUTE", "AI.DAGEXECUTE", "PERSIST", 1, "mul", "|>",
		"AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 2, "|>", "AI.TENSORSET", "b", "FLOAT", 1,
		"VALUES", 3, "|>", "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
		"|>", "AI.TENSORGET", "mul", "BLOB")
	dag(c, "DAGEXECUTE_RO", "AI.DAGEXECUTE_RO", "LOAD", 1, "persisted", "TIMEOUT", 1000,
		"|>", "AI.TENSORGET", "persisted", "VALUES")
	dag(c, "DAGEXECUTE_RO ROUTING", "AI.DAGEXECUTE_RO", "ROUTING", "{2}", "|>",
		"AI.TENSORSET", "tensor1", "FLOAT", 1, 2, "VALUES", 5, 10, "|>", "AI.TENSORSET",
		"tensor{2}", "FLOAT", 1, 2, "VALUES", 5, 10)
	dag(c, "DAGRUN_RO", "AI.DAGRUN_RO", "LOAD", 1, "persisted", "|>", "AI.TENSORGET",
		"persisted", "VALUES")

	equal("LOAD of nothing", errorOf(c, "AI.DAGRUN", "LOAD", 1, "notnumber", "|>",
		"AI.TENSORSET", "t", "FLOAT", 1, 2, "VALUES", 5, 10),
		"ERR tensor key is empty or in a different shard")
	equal("no keyword", errorOf(c, "AI.DAGEXECUTE", "|>", "AI.TENSORSET", "t", "FLOAT", 1,
		"VALUES", 1), "ERR AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one "+
		"out of ROUTING, LOAD, PERSIST keywords")
	equal("MODELRUN in DAGEXECUTE", errorOf(c, "AI.DAGEXECUTE", "PERSIST", 1, "mul", "|>",
		"AI.MODELRUN", "m", "INPUTS", "a", "b", "OUTPUTS", "mul"),
		"Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command")
	equal("MODELEXECUTE in DAGRUN", errorOf(c, "AI.DAGRUN", "|>", "AI.MODELEXECUTE", "m",
		"INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul"),
		"AI.MODELEXECUTE cannot be used in a deprecated AI.DAGRUN command")
}

// pipeline: redisai-go's pipeline mode Sends commands and Flushes them together; replies come
// back in order, errors in their places.
func pipeline(c redis.Conn) {
	sends := [][]interface{}{
		{"SET", "k", "v"},
		{"AI.TENSORSET", "p", "INT32", 2, "VALUES", 7, 8},
		{"AI.TENSORGET", "missing", "META", "META"},
		{"EXISTS", "p"},
		{"AI.TENSORGET", "p", "META", "VALUES"},
		{"GET", "k"},
	}
	for _, cmd := range sends {
		if err := c.Send(cmd[0].(string), cmd[1:]...); err != nil {
			fail("send: %v", err)
		}
	}
	if err := c.Flush(); err != nil {
		fail("flush: %v", err)
	}
	replies := make([]interface{}, len(sends))
	errs := make([]error, len(sends))
	for i := range sends {
		replies[i], errs[i] = c.Receive()
	}
	equal("SET", replies[0], "OK")
	equal("TENSORSET", replies[1], "OK")
	if errs[2] == nil || errs[2].Error() != "ERR tensor key is empty or in a different shard" {
		fail("pipelined error: %v", errs[2])
	}
	equal("EXISTS", replies[3], int64(1))
	fields := pairs(replies[4], errs[4])
	equal("pipelined values", fields["values"], []interface{}{int64(7), int64(8)})
	equal("GET", replies[5], []byte("v"))
}

// transaction: inside MULTI a job is queued and its place in EXEC's reply is RedisAI's error;
// a tensor write runs in the transaction like any Redis command.
func transaction(c redis.Conn) {
	for _, cmd := range [][]interface{}{
		{"MULTI"},
		{"SET", "t", "1"},
		{"AI.TENSORSET", "tx", "INT8", 1, "VALUES", 5},
		{"AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul"},
		{"INCR", "t"},
	} {
		if err := c.Send(cmd[0].(string), cmd[1:]...); err != nil {
			fail("send: %v", err)
		}
	}
	// Do reads the replies to what was sent first (OK, QUEUED...), then returns EXEC's
	reply, err := redis.Values(c.Do("EXEC"))
	if err != nil {
		fail("EXEC: %v", err)
	}
	equal("SET in MULTI", reply[0], "OK")
	equal("TENSORSET in MULTI", reply[1], "OK")
	if e, ok := reply[2].(redis.Error); !ok || e.Error() != "ERR Cannot run RedisAI command within a transaction or a LUA script" {
		fail("a job in MULTI: %#v", reply[2])
	}
	equal("INCR in MULTI", reply[3], int64(2))
	_, _, values := tensor(c, "tx")
	equal("the transaction's tensor", values, []int64{5})
}

// blocking: BLPOP waits on the client's own connection through the gateway while another
// connection pushes; SUBSCRIBE turns the connection into a pub/sub one.
func blocking(pool *redis.Pool) {
	waiter, pusher := pool.Get(), pool.Get()
	defer waiter.Close()
	defer pusher.Close()
	done := make(chan []string, 1)
	go func() {
		popped, err := redis.Strings(waiter.Do("BLPOP", "list", 10))
		if err != nil {
			fail("BLPOP: %v", err)
		}
		done <- popped
	}()
	for tries := 0; ; tries++ { // until Redis shows the BLPOP waiting
		clients, _ := redis.String(pusher.Do("CLIENT", "LIST", "TYPE", "normal"))
		if strings.Contains(clients, "cmd=blpop") {
			break
		}
		if tries == 500 {
			fail("BLPOP never reached Redis")
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(pusher.Do("RPUSH", "list", "x"))
	equal("BLPOP", <-done, []string{"list", "x"})

	sub := redis.PubSubConn{Conn: pool.Get()}
	defer sub.Close()
	must(nil, sub.Subscribe("news"))
	if confirm, ok := sub.Receive().(redis.Subscription); !ok || confirm.Kind != "subscribe" {
		fail("SUBSCRIBE: %#v", confirm)
	}
	equal("PUBLISH", must(redis.Int(pusher.Do("PUBLISH", "news", "hello"))), 1)
	message, ok := sub.Receive().(redis.Message)
	if !ok || message.Channel != "news" || string(message.Data) != "hello" {
		fail("message: %#v", message)
	}
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: client HOST:PORT GRAPH_PB")
	}
	graph, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("reading the graph: %v", err)
	}
	pool := &redis.Pool{MaxIdle: 2, Dial: func() (redis.Conn, error) {
		return redis.DialURL("redis://" + os.Args[1])
	}}
	defer pool.Close()
	c := pool.Get() // redisai-go's ActiveConnNX: one pooled connection for the whole session
	defer c.Close()
	must(c.Do("CLIENT", "SETNAME", "redisai-go-like"))
	tensors(c)
	models(c, graph)
	scripts(c)
	dags(c)
	pipeline(c)
	transaction(c)
	blocking(pool)
	// Close drains with Do(""): nothing is written, pending replies are read
	must(c.Do(""))
	fmt.Println("all RedisAI commands ok")
}
