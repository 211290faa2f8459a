package qtool.tokenize;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * Decodes tokens one at a time, for printing while generating: returns only whole UTF-8 characters, holding back
 * the bytes of a character that a byte-level or byte-fallback token split, and drops the dummy-prefix space at the
 * start as {@link Tokenizer#decode} does. Special tokens produce nothing. Not thread-safe.
 */
public final class StreamDecoder {
    private final Tokenizer tokenizer;
    private int spacesToStrip;
    private byte[] pending = new byte[0];

    StreamDecoder(Tokenizer tokenizer, int stripLeadingSpaces) {
        this.tokenizer = tokenizer;
        this.spacesToStrip = stripLeadingSpaces;
    }

    /** The text completed by this token; "" while a character is still incomplete. */
    public String next(int id) {
        byte[] b = tokenizer.tokenBytes(id);
        if (b.length == 0) return "";
        int from = 0;
        while (spacesToStrip > 0 && from < b.length && b[from] == ' ') {
            from++;
            spacesToStrip--;
        }
        if (from < b.length) spacesToStrip = 0;
        byte[] all = new byte[pending.length + b.length - from];
        System.arraycopy(pending, 0, all, 0, pending.length);
        System.arraycopy(b, from, all, pending.length, b.length - from);
        int complete = completeLength(all);
        pending = java.util.Arrays.copyOfRange(all, complete, all.length);
        return new String(all, 0, complete, StandardCharsets.UTF_8);
    }

    /** What is left over: an incomplete character, as U+FFFD. */
    public String flush() {
        String s = new String(pending, StandardCharsets.UTF_8);
        pending = new byte[0];
        return s;
    }

    /** The length of the longest prefix that does not end inside a multi-byte character that may yet complete. */
    static int completeLength(byte[] b) {
        int n = b.length;
        for (int back = 1; back <= Math.min(3, n); back++) {
            int c = b[n - back] & 0xFF;
            if ((c & 0xC0) == 0x80) continue; // continuation byte: look further back for the lead
            int need = c >= 0xF8 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            return need > back ? n - back : n;
        }
        return n;
    }

    static String decodeAll(Tokenizer t, int[] ids, int stripLeadingSpaces) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(ids.length * 4);
        for (int id : ids) out.writeBytes(t.tokenBytes(id));
        byte[] b = out.toByteArray();
        int from = 0;
        while (from < stripLeadingSpaces && from < b.length && b[from] == ' ') from++;
        return new String(b, from, b.length - from, StandardCharsets.UTF_8);
    }
}
