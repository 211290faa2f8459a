package qtool.load;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import java.io.IOException;
import java.io.StringWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * JSON as plain Java values over jackson-core's streaming API: objects are {@code LinkedHashMap<String, Object>},
 * arrays {@code List<Object>}, numbers {@code Long} or {@code Double}, plus String, Boolean and null.
 * Small files only (configs, tokenizers, headers); no data binding framework.
 */
public final class Json {
    public static final JsonFactory FACTORY = JsonFactory.builder()
            .streamReadConstraints(StreamReadConstraints.builder().maxStringLength(Integer.MAX_VALUE).build())
            .build();

    private Json() {}

    public static Object parse(String text, String where) {
        try (JsonParser p = FACTORY.createParser(text)) {
            JsonToken t = p.nextToken();
            if (t == null) throw new QtoolException(where + ": empty JSON");
            Object v = read(p, t);
            if (p.nextToken() != null) throw new QtoolException(where + ": trailing data after JSON value");
            return v;
        } catch (IOException e) {
            throw new QtoolException(where + ": invalid JSON: " + firstLine(e.getMessage()));
        }
    }

    public static Object parse(byte[] utf8, String where) {
        return parse(new String(utf8, StandardCharsets.UTF_8), where);
    }

    public static Object read(Path file) {
        try {
            return parse(Files.readString(file, StandardCharsets.UTF_8), file.toString());
        } catch (java.nio.charset.MalformedInputException e) {
            throw new QtoolException(file + ": not UTF-8 text");
        } catch (IOException e) {
            throw new QtoolException(file + ": cannot read: " + e.getMessage());
        }
    }

    /** Reads a file that must hold a JSON object. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> readObject(Path file) {
        Object v = read(file);
        if (!(v instanceof Map)) throw new QtoolException(file + ": expected a JSON object");
        return (Map<String, Object>) v;
    }

    private static Object read(JsonParser p, JsonToken t) throws IOException {
        switch (t) {
            case START_OBJECT -> {
                Map<String, Object> m = new LinkedHashMap<>();
                for (JsonToken k = p.nextToken(); k != JsonToken.END_OBJECT; k = p.nextToken()) {
                    String name = p.currentName();
                    m.put(name, read(p, p.nextToken()));
                }
                return m;
            }
            case START_ARRAY -> {
                List<Object> l = new ArrayList<>();
                for (JsonToken e = p.nextToken(); e != JsonToken.END_ARRAY; e = p.nextToken()) l.add(read(p, e));
                return l;
            }
            case VALUE_STRING -> { return p.getText(); }
            case VALUE_NUMBER_INT -> { return p.getLongValue(); }
            case VALUE_NUMBER_FLOAT -> { return p.getDoubleValue(); }
            case VALUE_TRUE -> { return Boolean.TRUE; }
            case VALUE_FALSE -> { return Boolean.FALSE; }
            case VALUE_NULL -> { return null; }
            default -> throw new IOException("unexpected token " + t);
        }
    }

    /** Compact JSON text of a value made of maps, lists, strings, numbers, booleans, null, arrays of primitives. */
    public static String write(Object value) {
        StringWriter w = new StringWriter();
        write(value, w, false);
        return w.toString();
    }

    public static String writePretty(Object value) {
        StringWriter w = new StringWriter();
        write(value, w, true);
        return w.toString();
    }

    public static void write(Object value, Writer out, boolean pretty) {
        try (JsonGenerator g = FACTORY.createGenerator(out)) {
            if (pretty) g.useDefaultPrettyPrinter();
            write(g, value);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /** Writes a value as pretty JSON into a file (atomically: temp file then rename). */
    public static void writeFile(Path file, Object value) {
        try {
            Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
            Files.writeString(tmp, writePretty(value) + "\n", StandardCharsets.UTF_8);
            Files.move(tmp, file, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            throw new QtoolException(file + ": cannot write: " + e.getMessage());
        }
    }

    private static void write(JsonGenerator g, Object v) throws IOException {
        switch (v) {
            case null -> g.writeNull();
            case Map<?, ?> m -> {
                g.writeStartObject();
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    g.writeFieldName(String.valueOf(e.getKey()));
                    write(g, e.getValue());
                }
                g.writeEndObject();
            }
            case List<?> l -> {
                g.writeStartArray();
                for (Object e : l) write(g, e);
                g.writeEndArray();
            }
            case String s -> g.writeString(s);
            case Boolean b -> g.writeBoolean(b);
            case Integer i -> g.writeNumber(i);
            case Long l -> g.writeNumber(l);
            case Float f -> g.writeNumber(f);
            case Double d -> g.writeNumber(d);
            case Number n -> g.writeNumber(n.toString());
            case int[] a -> { g.writeStartArray(); for (int x : a) g.writeNumber(x); g.writeEndArray(); }
            case long[] a -> { g.writeStartArray(); for (long x : a) g.writeNumber(x); g.writeEndArray(); }
            case float[] a -> { g.writeStartArray(); for (float x : a) g.writeNumber(x); g.writeEndArray(); }
            case double[] a -> { g.writeStartArray(); for (double x : a) g.writeNumber(x); g.writeEndArray(); }
            default -> g.writeString(v.toString());
        }
    }

    // ---- typed access helpers for parsed objects ----

    public static Map<String, Object> object(Object v, String what) {
        if (v instanceof Map<?, ?> m) {
            @SuppressWarnings("unchecked") Map<String, Object> r = (Map<String, Object>) m;
            return r;
        }
        throw new QtoolException(what + ": expected a JSON object");
    }

    public static List<Object> array(Object v, String what) {
        if (v instanceof List<?> l) {
            @SuppressWarnings("unchecked") List<Object> r = (List<Object>) l;
            return r;
        }
        throw new QtoolException(what + ": expected a JSON array");
    }

    private static String firstLine(String s) {
        if (s == null) return "";
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }
}
