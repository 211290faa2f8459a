package qtool.tokenize;

import java.nio.charset.StandardCharsets;

/**
 * Just enough of the protobuf wire format to read SentencePiece's ModelProto: varints, 32-bit floats,
 * length-delimited strings and messages, and skipping fields that are not needed.
 */
final class ProtobufReader {
    static final int VARINT = 0;
    static final int FIXED64 = 1;
    static final int LENGTH_DELIMITED = 2;
    static final int FIXED32 = 5;

    private final byte[] buf;
    private int pos;
    private final int end;
    private final String where;

    ProtobufReader(byte[] buf, int from, int to, String where) {
        this.buf = buf;
        this.pos = from;
        this.end = to;
        this.where = where;
    }

    boolean hasMore() {
        return pos < end;
    }

    /** The next field's key: field number << 3 | wire type. */
    int readTag() {
        long tag = readVarint();
        if (tag <= 0 || tag > Integer.MAX_VALUE) throw malformed("bad field tag " + tag);
        return (int) tag;
    }

    long readVarint() {
        long v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos >= end) throw malformed("truncated varint");
            byte b = buf[pos++];
            v |= (long) (b & 0x7F) << shift;
            if (b >= 0) return v;
        }
        throw malformed("varint longer than 10 bytes");
    }

    float readFloat() {
        if (pos + 4 > end) throw malformed("truncated float");
        int bits = (buf[pos] & 0xFF) | (buf[pos + 1] & 0xFF) << 8 | (buf[pos + 2] & 0xFF) << 16 | (buf[pos + 3] & 0xFF) << 24;
        pos += 4;
        return Float.intBitsToFloat(bits);
    }

    /** A length-delimited field's bounds: {from, to}; the reader moves past it. */
    int[] readLengthDelimited() {
        long len = readVarint();
        if (len < 0 || len > end - pos) throw malformed("length " + len + " runs past the end");
        int from = pos;
        pos += (int) len;
        return new int[] {from, pos};
    }

    String readString() {
        int[] r = readLengthDelimited();
        return new String(buf, r[0], r[1] - r[0], StandardCharsets.UTF_8);
    }

    ProtobufReader readMessage(String name) {
        int[] r = readLengthDelimited();
        return new ProtobufReader(buf, r[0], r[1], where + " " + name);
    }

    void skip(int wireType) {
        switch (wireType) {
            case VARINT -> readVarint();
            case FIXED64 -> advance(8);
            case LENGTH_DELIMITED -> readLengthDelimited();
            case FIXED32 -> advance(4);
            default -> throw malformed("unsupported wire type " + wireType);
        }
    }

    private void advance(int n) {
        if (pos + n > end) throw malformed("truncated field");
        pos += n;
    }

    qtool.QtoolException malformed(String problem) {
        return new qtool.QtoolException(where + ": not a valid SentencePiece model (" + problem + " at byte " + pos + ")");
    }
}
