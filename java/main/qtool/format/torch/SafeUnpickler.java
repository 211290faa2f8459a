package qtool.format.torch;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;
import qtool.QtoolException;

/**
 * A pickle interpreter for tensor checkpoints that never runs code. It knows the opcodes that {@code torch.save}
 * emits (protocols 2 to 5) and a short list of globals; every other global is refused by name before anything
 * happens, so a checkpoint that names {@code os.system} fails instead of executing. Calls to an allowed global
 * (REDUCE) build Java values: a map for {@code OrderedDict}, a {@link qtool.backend.Tensor} for
 * {@code _rebuild_tensor_v2}. Persistent ids (storages) go to the caller's resolver.
 * Values: dicts are {@link LinkedHashMap}, lists {@link ArrayList}, tuples unmodifiable {@link List}, integers
 * {@link Long} (or {@link BigInteger} past 64 bits), floats {@link Double}, strings {@link String}, None null.
 */
public final class SafeUnpickler {

    /** A global the pickle named, resolved only if it is on the allowed list. */
    public record Global(String module, String name) {
        @Override
        public String toString() {
            return module + "." + name;
        }
    }

    /** The callables REDUCE may call; the storage types may appear only inside persistent ids. */
    public static final Set<String> ALLOWED = Set.of(
            "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
            "torch.HalfStorage", "torch.BFloat16Storage", "torch.FloatStorage", "torch.IntStorage", "torch.LongStorage");

    private static final Object MARK = new Object();

    private final byte[] code;
    private final String where;
    private final Function<Object, Object> persistentLoad;
    private final Function<List<Object>, Object> rebuildTensor;
    private final List<Object> stack = new ArrayList<>();
    private final Map<Long, Object> memo = new HashMap<>();
    private int pos;

    /**
     * @param persistentLoad turns a persistent id (BINPERSID) into a value, e.g. a storage
     * @param rebuildTensor builds a tensor from {@code _rebuild_tensor_v2}'s argument tuple
     */
    public SafeUnpickler(byte[] code, String where, Function<Object, Object> persistentLoad, Function<List<Object>, Object> rebuildTensor) {
        this.code = code;
        this.where = where;
        this.persistentLoad = persistentLoad;
        this.rebuildTensor = rebuildTensor;
    }

    public Object load() {
        while (true) {
            int at = pos;
            int op = u8();
            switch (op) {
                case 0x80 -> { // PROTO
                    int proto = u8();
                    if (proto > 5) throw bad(at, "pickle protocol " + proto + " is newer than 5");
                }
                case 0x95 -> skip(8); // FRAME: framing is only a read-ahead hint
                case '.' -> { // STOP
                    if (stack.size() != 1) throw bad(at, "STOP with " + stack.size() + " values on the stack");
                    return stack.get(0);
                }
                case '}' -> push(new LinkedHashMap<>());
                case ']' -> push(new ArrayList<>());
                case ')' -> push(List.of());
                case '(' -> push(MARK);
                case 's' -> {
                    Object value = pop(at);
                    Object key = pop(at);
                    dict(peek(at), at).put(key, value);
                }
                case 'u' -> {
                    List<Object> items = popMark(at);
                    if (items.size() % 2 != 0) throw bad(at, "SETITEMS with an odd number of values");
                    Map<Object, Object> d = dict(peek(at), at);
                    for (int i = 0; i < items.size(); i += 2) d.put(items.get(i), items.get(i + 1));
                }
                case 'a' -> {
                    Object value = pop(at);
                    list(peek(at), at).add(value);
                }
                case 'e' -> {
                    List<Object> items = popMark(at);
                    list(peek(at), at).addAll(items);
                }
                case 't' -> push(tuple(popMark(at)));
                case 0x85 -> push(tuple(List.of(nonMark(pop(at), at))));
                case 0x86 -> {
                    Object b = pop(at);
                    Object a = pop(at);
                    push(tuple(List.of(nonMark(a, at), nonMark(b, at))));
                }
                case 0x87 -> {
                    Object c = pop(at);
                    Object b = pop(at);
                    Object a = pop(at);
                    push(tuple(List.of(nonMark(a, at), nonMark(b, at), nonMark(c, at))));
                }
                case 'J' -> push((long) le(4, true));
                case 'K' -> push((long) u8());
                case 'M' -> push(le(2, false));
                case 0x8a -> { // LONG1: little-endian two's complement
                    int n = u8();
                    byte[] b = bytes(n);
                    byte[] be = new byte[Math.max(1, n)];
                    for (int i = 0; i < n; i++) be[n - 1 - i] = b[i];
                    BigInteger v = n == 0 ? BigInteger.ZERO : new BigInteger(be);
                    push(v.bitLength() < 64 ? (Object) v.longValue() : v);
                }
                case 'G' -> push(Double.longBitsToDouble(be8()));
                case 0x8c -> push(utf8(u8()));
                case 'X' -> push(utf8(le(4, false)));
                case 0x8d -> push(utf8(le(8, false)));
                case 'C' -> push(bytes(u8()));
                case 'B' -> push(bytes(Math.toIntExact(le(4, false))));
                case 'q' -> memo.put((long) u8(), peek(at));
                case 'r' -> memo.put(le(4, false), peek(at));
                case 0x94 -> memo.put((long) memo.size(), peek(at));
                case 'h' -> push(memoGet(u8(), at));
                case 'j' -> push(memoGet(le(4, false), at));
                case 'N' -> push(null);
                case 0x88 -> push(Boolean.TRUE);
                case 0x89 -> push(Boolean.FALSE);
                case 'c' -> push(global(line(), line(), at));
                case 0x93 -> {
                    Object name = pop(at);
                    Object module = pop(at);
                    if (!(module instanceof String m) || !(name instanceof String n)) throw bad(at, "STACK_GLOBAL needs two strings");
                    push(global(m, n, at));
                }
                case 'R' -> {
                    Object args = pop(at);
                    Object callable = pop(at);
                    push(call(callable, args, at));
                }
                case 0x81 -> { // NEWOBJ: cls.__new__(cls, *args); only OrderedDict
                    Object args = pop(at);
                    Object cls = pop(at);
                    if (!(cls instanceof Global g) || !g.toString().equals("collections.OrderedDict")) {
                        throw bad(at, "NEWOBJ of " + cls + " is not supported");
                    }
                    push(call(cls, args, at));
                }
                case 'b' -> { // BUILD: sets attributes; a state dict's only ones are metadata (_metadata), dropped
                    Object state = pop(at);
                    Object target = peek(at);
                    if (!(target instanceof Map) && !(target instanceof qtool.backend.Tensor)) {
                        throw bad(at, "BUILD on " + describe(target) + " is not supported");
                    }
                    if (state != null && !(state instanceof Map) && !(state instanceof List)) {
                        throw bad(at, "BUILD with state " + describe(state) + " is not supported");
                    }
                }
                case 'Q' -> push(persistentLoad.apply(pop(at)));
                default -> throw bad(at, String.format("opcode 0x%02x is not one that tensor checkpoints use; refusing it", op));
            }
        }
    }

    private Object global(String module, String name, int at) {
        Global g = new Global(module, name);
        if (!ALLOWED.contains(g.toString())) {
            throw new QtoolException(where + ": refuses global " + g + " (a checkpoint holds only tensors; this pickle names code)");
        }
        return g;
    }

    private Object call(Object callable, Object args, int at) {
        if (!(callable instanceof Global g)) throw bad(at, "REDUCE on " + describe(callable) + ", not a global");
        if (!(args instanceof List<?> a)) throw bad(at, "REDUCE arguments are " + describe(args) + ", not a tuple");
        @SuppressWarnings("unchecked")
        List<Object> argList = (List<Object>) a;
        return switch (g.toString()) {
            case "collections.OrderedDict" -> {
                if (!argList.isEmpty()) throw bad(at, "OrderedDict called with arguments");
                yield new LinkedHashMap<>();
            }
            case "torch._utils._rebuild_tensor_v2" -> rebuildTensor.apply(argList);
            case "torch._utils._rebuild_parameter" -> {
                if (argList.isEmpty()) throw bad(at, "_rebuild_parameter without arguments");
                yield argList.get(0);
            }
            default -> throw bad(at, g + " may not be called");
        };
    }

    private static List<Object> tuple(List<Object> items) {
        return Collections.unmodifiableList(new ArrayList<>(items));
    }

    @SuppressWarnings("unchecked")
    private Map<Object, Object> dict(Object o, int at) {
        if (o instanceof LinkedHashMap<?, ?> m) return (Map<Object, Object>) m;
        throw bad(at, "SETITEM on " + describe(o) + ", not a dict");
    }

    @SuppressWarnings("unchecked")
    private List<Object> list(Object o, int at) {
        if (o instanceof ArrayList<?> l) return (List<Object>) l;
        throw bad(at, "APPEND on " + describe(o) + ", not a list");
    }

    private static String describe(Object o) {
        return o == null ? "None" : o instanceof Global g ? g.toString() : o.getClass().getSimpleName();
    }

    private Object memoGet(long key, int at) {
        if (!memo.containsKey(key)) throw bad(at, "memo key " + key + " was never stored");
        return memo.get(key);
    }

    private void push(Object o) {
        stack.add(o);
    }

    private Object pop(int at) {
        if (stack.isEmpty()) throw bad(at, "stack underflow");
        return stack.removeLast();
    }

    private Object peek(int at) {
        if (stack.isEmpty()) throw bad(at, "stack underflow");
        Object o = stack.getLast();
        if (o == MARK) throw bad(at, "a MARK where a value belongs");
        return o;
    }

    private Object nonMark(Object o, int at) {
        if (o == MARK) throw bad(at, "a MARK where a value belongs");
        return o;
    }

    private List<Object> popMark(int at) {
        int m = stack.lastIndexOf(MARK);
        if (m < 0) throw bad(at, "no MARK on the stack");
        List<Object> items = new ArrayList<>(stack.subList(m + 1, stack.size()));
        stack.subList(m, stack.size()).clear();
        return items;
    }

    private int u8() {
        need(1);
        return code[pos++] & 0xff;
    }

    private void skip(int n) {
        need(n);
        pos += n;
    }

    private byte[] bytes(long n) {
        need(n);
        byte[] b = java.util.Arrays.copyOfRange(code, pos, pos + (int) n);
        pos += (int) n;
        return b;
    }

    private long le(int n, boolean signed) {
        need(n);
        long v = 0;
        for (int i = n - 1; i >= 0; i--) v = (v << 8) | (code[pos + i] & 0xff);
        pos += n;
        if (signed && n < 8) v = (v << (64 - 8 * n)) >> (64 - 8 * n);
        if (!signed && v < 0) throw bad(pos - n, "length past 2^63");
        return v;
    }

    private long be8() {
        need(8);
        long v = 0;
        for (int i = 0; i < 8; i++) v = (v << 8) | (code[pos + i] & 0xff);
        pos += 8;
        return v;
    }

    private String utf8(long n) {
        return new String(bytes(n), StandardCharsets.UTF_8);
    }

    private String line() {
        int end = pos;
        while (end < code.length && code[end] != '\n') end++;
        if (end >= code.length) throw bad(pos, "GLOBAL name runs past the end");
        String s = new String(code, pos, end - pos, StandardCharsets.UTF_8);
        pos = end + 1;
        return s;
    }

    private void need(long n) {
        if (n < 0 || n > code.length - pos) throw bad(pos, "truncated pickle (needs " + n + " more bytes, " + (code.length - pos) + " left)");
    }

    private QtoolException bad(int at, String msg) {
        return new QtoolException(where + ": at byte " + at + ": " + msg);
    }
}
