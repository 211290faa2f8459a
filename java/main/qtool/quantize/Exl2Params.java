package qtool.quantize;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * One EXL2 quantization option for a linear layer: ExLlamaV2's {@code QParams} (conversion/qparams.py). The input
 * rows of the weight, in act-order, are split into segments of decreasing bit width; segment s takes about
 * {@code proportion} of the rows, in groups of {@code groupSize} rows, each group with its own 4-bit sub-scale per
 * output column and one fp16 super-scale.
 *
 * <p>Rows and columns here are ExLlamaV2's: rows = input features (the dimension GPTQ walks), columns = output
 * features. qtool's weights are [out, in], so a linear {@code [out, in]} has {@code rows = in}, {@code columns = out}.
 * The bit counts of {@link #totalBits} are for the columns as stored, which ExLlamaV2 pads to a multiple of 32
 * ({@link #paddedColumns}): pass {@code paddedColumns(out)} to count what a file holds, as measure.py does.
 *
 * <p>A proportion keeps the text it was written with ({@code 1} or {@code 1.0}), because ExLlamaV2 prints options and
 * writes measurement.json with Python's repr of the number it was given.
 *
 * @param segments  in storage order, bit widths strictly decreasing
 * @param scaleBits bits per sub-scale; ExLlamaV2 packs only 4
 */
public record Exl2Params(List<Segment> segments, int scaleBits) {

    /** The bit widths ExLlamaV2's kernels read. */
    public static final List<Integer> BIT_WIDTHS = List.of(8, 6, 5, 4, 3, 2);
    public static final int SCALE_BITS = 4;

    /**
     * @param bits           code width of the segment's groups
     * @param groupSize      rows per group (the last group of the matrix may be shorter)
     * @param proportion     the share of the rows asked for (groups are rounded up)
     * @param proportionText the proportion as written ({@code "0.05"}, {@code "1"}, {@code "1.0"})
     */
    public record Segment(int bits, int groupSize, double proportion, String proportionText) {
        public Segment {
            if (!BIT_WIDTHS.contains(bits)) {
                throw new QtoolException("EXL2 bits must be one of " + BIT_WIDTHS + ", not " + bits);
            }
            // ExLlamaV2's kernels step through rows 32 at a time (2-bit: 16), so groups must be multiples of that.
            int step = rowStep(bits);
            if (groupSize <= 0 || groupSize % step != 0) {
                throw new QtoolException("EXL2 group size for " + bits + "-bit must be a positive multiple of " + step + ", not " + groupSize);
            }
            if (!(proportion > 0 && proportion <= 1)) {
                throw new QtoolException("EXL2 bits proportion must be in (0, 1], not " + proportionText);
            }
        }

        public Segment(int bits, int groupSize, String proportionText) {
            this(bits, groupSize, parseProportion(proportionText), proportionText);
        }
    }

    /**
     * Where the groups of one matrix lie: group g has {@code bits[g]} and covers processing-order rows
     * {@code [firstRow[g], firstRow[g] + rows[g])}; the last group is ragged when the rows do not fill it.
     */
    public record GroupLayout(int[] bits, int[] firstRow, int[] rows) {
        public int count() {
            return bits.length;
        }

        /** Packed int32 rows of group g in q_weight: rows·bits/32. */
        public int packedRows(int g) {
            return rows[g] * bits[g] / 32;
        }

        /** First packed row of group g (the second value of its q_groups pair). */
        public int firstPackedRow(int g) {
            int r = 0;
            for (int i = 0; i < g; i++) r += packedRows(i);
            return r;
        }

        public int totalPackedRows() {
            return firstPackedRow(count());
        }
    }

    public Exl2Params {
        segments = List.copyOf(segments);
        if (segments.isEmpty()) throw new QtoolException("EXL2 options need at least one bit width");
        if (scaleBits != SCALE_BITS) {
            throw new QtoolException("EXL2 scale_bits must be " + SCALE_BITS + " (the only sub-scale width ExLlamaV2 packs), not " + scaleBits);
        }
        double sum = 0;
        for (int s = 0; s < segments.size(); s++) {
            if (s > 0 && segments.get(s).bits() >= segments.get(s - 1).bits()) {
                throw new QtoolException("EXL2 bit widths must be strictly decreasing (ExLlamaV2 stores groups from the widest), not " + bitsList(segments));
            }
            sum += segments.get(s).proportion();
        }
        if (Math.abs(sum - 1) > 1e-6) {
            throw new QtoolException("EXL2 bits proportions must sum to 1, not " + sum + " (" + descOf(segments, scaleBits) + ")");
        }
    }

    /** QParams(group_size, bits, bits_prop, 4) with one group size for every width. */
    public static Exl2Params of(int groupSize, int[] bits, String... proportions) {
        int[] gs = new int[bits.length];
        java.util.Arrays.fill(gs, groupSize);
        return of(gs, bits, proportions);
    }

    /** QParams([group sizes], bits, bits_prop, 4): group sizes per width. */
    public static Exl2Params of(int[] groupSizes, int[] bits, String... proportions) {
        if (groupSizes.length != bits.length || proportions.length != bits.length) {
            throw new IllegalArgumentException("group sizes, bits and proportions differ in length");
        }
        List<Segment> segs = new ArrayList<>();
        for (int i = 0; i < bits.length; i++) segs.add(new Segment(bits[i], groupSizes[i], proportions[i]));
        return new Exl2Params(segs, SCALE_BITS);
    }

    /** Parses {@link #desc()}'s form, e.g. {@code 0.05:8b_32g/0.1:4b_128g/0.85:3b_128g s4} (the " s4" is optional). */
    public static Exl2Params parse(String desc) {
        String body = desc.strip();
        int scaleBits = SCALE_BITS;
        int space = body.lastIndexOf(" s");
        if (space >= 0) {
            scaleBits = parseInt(body.substring(space + 2), "scale bits", desc);
            body = body.substring(0, space);
        }
        List<Segment> segs = new ArrayList<>();
        for (String part : body.split("/")) {
            int colon = part.indexOf(':'), b = part.indexOf("b_"), g = part.lastIndexOf('g');
            if (colon < 0 || b < colon || g != part.length() - 1) {
                throw new QtoolException("EXL2 option \"" + desc + "\": expected parts like 0.1:4b_128g separated by /");
            }
            segs.add(new Segment(parseInt(part.substring(colon + 1, b), "bits", desc),
                    parseInt(part.substring(b + 2, g), "group size", desc), part.substring(0, colon)));
        }
        return new Exl2Params(segs, scaleBits);
    }

    /**
     * Reads the dict form of measurement.json and job.json: {@code {"group_size": {"4": 128, ...}, "bits": [...],
     * "bits_prop": [...], "scale_bits": 4}}; {@code group_size} may also be a single number or a list (as QParams
     * accepts).
     */
    public static Exl2Params fromJson(Map<String, Object> dict, String where) {
        List<Object> bits = Json.array(require(dict, "bits", where), where + ": bits");
        List<Object> props = Json.array(require(dict, "bits_prop", where), where + ": bits_prop");
        if (bits.size() != props.size()) throw new QtoolException(where + ": bits and bits_prop differ in length");
        Object gsValue = require(dict, "group_size", where);
        List<Segment> segs = new ArrayList<>();
        for (int i = 0; i < bits.size(); i++) {
            int b = intValue(bits.get(i), where + ": bits");
            Object gs = switch (gsValue) {
                case Map<?, ?> m -> m.get(Integer.toString(b));
                case List<?> l -> l.size() == bits.size() ? l.get(i) : null;
                default -> gsValue;
            };
            if (gs == null) throw new QtoolException(where + ": group_size has no entry for " + b + "-bit");
            Object p = props.get(i);
            if (!(p instanceof Number)) throw new QtoolException(where + ": bits_prop holds " + p + ", not a number");
            segs.add(new Segment(b, intValue(gs, where + ": group_size"), ((Number) p).doubleValue(), pythonRepr((Number) p)));
        }
        return new Exl2Params(segs, intValue(require(dict, "scale_bits", where), where + ": scale_bits"));
    }

    /** QParams.get_dict(): the JSON form, numbers written as ExLlamaV2 writes them. */
    public Map<String, Object> toJson() {
        Map<String, Object> gs = new LinkedHashMap<>();
        List<Object> bits = new ArrayList<>(), props = new ArrayList<>();
        for (Segment s : segments) {
            gs.put(Integer.toString(s.bits()), s.groupSize());
            bits.add(s.bits());
            props.add(new BigDecimal(s.proportionText())); // written as given: 1, 1.0, 0.05
        }
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("group_size", gs);
        m.put("bits", bits);
        m.put("bits_prop", props);
        m.put("scale_bits", scaleBits);
        return m;
    }

    /** QParams.get_desc(): {@code 0.1:4b_128g/0.9:3b_128g s4}. */
    public String desc() {
        return descOf(segments, scaleBits);
    }

    @Override
    public String toString() {
        return desc();
    }

    /** ExLlamaV2 pads a linear's output columns to a multiple of 32 (ExLlamaV2Linear's pad32). */
    public static int paddedColumns(int columns) {
        return columns + Math.floorMod(-columns, 32);
    }

    /** Groups per segment for a matrix of {@code rows} input rows: AdaptiveGPTQ.configure's {@code bits_groups}. */
    public int[] groupsPerSegment(int rows) {
        if (rows <= 0) throw new IllegalArgumentException("rows must be positive: " + rows);
        int[] groups = new int[segments.size()];
        long remaining = rows;
        for (int s = 0; s < groups.length; s++) {
            Segment seg = segments.get(s);
            // Python: math.ceil(min(rows * p, remaining_rows) / gsz), in double; a segment after the rows are
            // used up gets ceil(negative / gsz) = 0 groups.
            groups[s] = (int) Math.ceil(Math.min(rows * seg.proportion(), (double) remaining) / seg.groupSize());
            remaining -= (long) groups[s] * seg.groupSize();
        }
        if (remaining > 0) throw new QtoolException("EXL2 option " + desc() + " leaves " + remaining + " of " + rows + " rows without a group");
        return groups;
    }

    /** The group layout of a matrix with {@code rows} input rows, as AdaptiveGPTQ.quantize and pack walk it. */
    public GroupLayout layout(int rows) {
        int[] perSegment = groupsPerSegment(rows);
        int n = 0;
        for (int g : perSegment) n += g;
        int[] bits = new int[n], first = new int[n], count = new int[n];
        int g = 0, b = 0;
        for (int s = 0; s < perSegment.length; s++) {
            for (int k = 0; k < perSegment[s]; k++, g++) {
                int a = b;
                b = Math.min(a + segments.get(s).groupSize(), rows);
                bits[g] = segments.get(s).bits();
                first[g] = a;
                count[g] = b - a;
            }
        }
        return new GroupLayout(bits, first, count);
    }

    /**
     * Refuses a matrix ExLlamaV2 cannot store or read: every group (the ragged last one included) must fill whole
     * packed rows in the 32-row (2-bit: 16-row) steps the kernels take, and permutation indices are 16-bit.
     */
    public void requireStorable(int rows, int columns, String tensor) {
        if (rows > 65536) throw new QtoolException(tensor + ": " + rows + " input features; EXL2 permutation indices are 16-bit (at most 65536)");
        if (columns <= 0) throw new QtoolException(tensor + ": no output features");
        GroupLayout l = layout(rows);
        int g = l.count() - 1;
        if (l.rows()[g] % rowStep(l.bits()[g]) != 0) {
            throw new QtoolException(tensor + ": " + rows + " input features leave a last " + l.bits()[g] + "-bit group of "
                    + l.rows()[g] + " rows; EXL2 groups must be multiples of " + rowStep(l.bits()[g]) + " rows (option " + desc() + ")");
        }
    }

    /**
     * QParams.total_bits(shape = (rows, columns), bias_shape = (columns,) or None): codes + 16 bits per group for
     * q_scale_max + 32 per group for q_groups + scaleBits per column per group for q_scale + 32 per row for q_invperm
     * (+ 16 per bias value).
     */
    public long totalBits(int rows, int columns, boolean hasBias) {
        int[] perSegment = groupsPerSegment(rows);
        long groups = 0, bits = 0, remaining = rows;
        for (int s = 0; s < perSegment.length; s++) {
            groups += perSegment[s];
            long r = Math.min((long) segments.get(s).groupSize() * perSegment[s], remaining);
            remaining -= r;
            bits += r * columns * segments.get(s).bits();
        }
        bits += groups * 16;                        // q_scale_max
        bits += groups * (16 + 16);                 // q_groups
        bits += groups * columns * scaleBits;       // q_scale
        bits += (long) rows * 32;                   // q_invperm
        if (hasBias) bits += 16L * columns;
        return bits;
    }

    /** QParams.bpw: {@link #totalBits} per weight (bias values counted as weights). */
    public double bpw(int rows, int columns, boolean hasBias) {
        long numel = (long) rows * columns + (hasBias ? columns : 0);
        return (double) totalBits(rows, columns, hasBias) / numel;
    }

    // ---- ExLlamaV2's option grids (qparams.py), the choices measurement tries per layer type -------------------

    /** qparams_attn: 19 rows of options for (q_proj, k_proj, v_proj, o_proj). */
    public static final List<List<Exl2Params>> ATTENTION_OPTIONS = grid(
            row("0.05:3b_64g/0.95:2b_64g", "0.05:3b_64g/0.95:2b_64g", "0.05:3b_64g/0.95:2b_64g", "0.05:3b_64g/0.95:2b_64g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.1:3b_64g/0.9:2b_64g", "0.25:3b_64g/0.75:2b_64g", "0.1:3b_64g/0.9:2b_64g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.1:3b_64g/0.9:2b_64g", "0.1:4b_128g/0.9:3b_128g", "0.1:3b_64g/0.9:2b_64g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.1:3b_64g/0.9:2b_64g", "0.1:4b_128g/0.9:3b_128g", "0.1:4b_128g/0.9:3b_128g"),
            row("0.1:4b_128g/0.9:3b_128g", "0.1:4b_128g/0.9:3b_128g", "0.1:4b_128g/0.9:3b_128g", "0.1:4b_128g/0.9:3b_128g"),
            row("0.1:4b_128g/0.9:3b_128g", "0.1:4b_128g/0.9:3b_128g", "0.1:4b_64g/0.9:3b_64g", "0.1:4b_128g/0.9:3b_128g"),
            row("1:4b_128g", "1:4b_128g", "1:4b_128g", "1:4b_128g"),
            row("1:4b_128g", "1:4b_128g", "1:4b_64g", "1:4b_128g"),
            row("1:4b_64g", "1:4b_64g", "1:4b_32g", "1:4b_64g"),
            row("1:4b_32g", "1:4b_32g", "1:4b_32g", "1:4b_32g"),
            row("0.1:5b_128g/0.9:4b_128g", "0.1:5b_128g/0.9:4b_128g", "0.1:5b_64g/0.9:4b_64g", "0.1:5b_128g/0.9:4b_128g"),
            row("0.1:5b_64g/0.9:4b_64g", "0.1:5b_64g/0.9:4b_64g", "0.1:5b_32g/0.9:4b_32g", "0.1:5b_64g/0.9:4b_64g"),
            row("0.1:5b_64g/0.9:4b_64g", "0.1:5b_64g/0.9:4b_64g", "1:5b_64g", "0.1:5b_64g/0.9:4b_64g"),
            row("0.1:5b_32g/0.9:4b_32g", "0.1:5b_32g/0.9:4b_32g", "1:5b_32g", "0.1:5b_32g/0.9:4b_32g"),
            row("0.1:6b_128g/0.9:5b_128g", "0.1:6b_128g/0.9:5b_128g", "1:6b_128g", "0.1:6b_128g/0.9:5b_128g"),
            row("0.1:6b_32g/0.9:5b_32g", "0.1:6b_32g/0.9:5b_32g", "1:6b_32g", "0.1:6b_32g/0.9:5b_32g"),
            row("1:6b_128g", "1:6b_128g", "1:6b_128g", "1:6b_128g"),
            row("1:6b_32g", "1:6b_32g", "1:8b_32g", "1:6b_32g"),
            row("1:8b_128g", "1:8b_128g", "1:8b_128g", "1:8b_128g"));

    /** qparams_mlp: 17 rows of options for (gate_proj, up_proj, down_proj). */
    public static final List<List<Exl2Params>> MLP_OPTIONS = grid(
            row("0.05:3b_64g/0.95:2b_64g", "0.05:3b_64g/0.95:2b_64g", "0.05:6b_32g/0.2:3b_64g/0.75:2b_64g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.25:3b_64g/0.75:2b_64g", "0.05:6b_32g/0.2:3b_64g/0.75:2b_64g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.3:3b_64g/0.7:2b_64g", "0.05:5b_32g/0.95:3b_32g"),
            row("0.1:3b_64g/0.9:2b_64g", "0.3:3b_64g/0.7:2b_64g", "0.05:5b_32g/0.95:4b_32g"),
            row("0.1:4b_128g/0.9:3b_128g", "0.25:4b_128g/0.75:3b_128g", "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g"),
            row("0.1:4b_32g/0.9:3b_32g", "0.25:4b_32g/0.75:3b_32g", "0.05:8b_32g/0.1:4b_32g/0.85:3b_32g"),
            row("0.1:4b_32g/0.9:3b_32g", "0.25:4b_32g/0.75:3b_32g", "0.05:8b_32g/0.95:4b_128g"),
            row("1:4b_128g", "1:4b_32g", "0.05:8b_32g/0.95:4b_128g"),
            row("1:4b_32g", "1:4b_32g", "0.05:8b_32g/0.95:4b_32g"),
            row("0.1:5b_128g/0.9:4b_128g", "0.25:5b_128g/0.75:4b_128g", "0.05:8b_32g/0.1:5b_128g/0.85:4b_128g"),
            row("0.1:5b_32g/0.9:4b_32g", "0.25:5b_32g/0.75:4b_32g", "0.05:8b_32g/0.1:5b_32g/0.85:4b_32g"),
            row("0.1:6b_128g/0.9:5b_128g", "0.25:6b_128g/0.75:5b_128g", "0.05:8b_32g/0.1:6b_128g/0.85:5b_128g"),
            row("0.1:6b_32g/0.9:5b_32g", "0.25:6b_32g/0.75:5b_32g", "0.05:8b_32g/0.1:6b_32g/0.85:5b_32g"),
            row("1:6b_128g", "1:6b_128g", "0.05:8b_32g/0.95:6b_128g"),
            row("0.1:8b_128g/0.9:6b_128g", "0.1:8b_128g/0.9:6b_128g", "0.15:8b_128g/0.85:6b_128g"),
            row("0.1:8b_128g/0.9:6b_128g", "0.1:8b_128g/0.9:6b_128g", "1:8b_128g"),
            row("1:8b_128g", "1:8b_128g", "1:8b_128g"));

    /** qparams_headoptions: the lm_head option for each {@code -hb} (16 = unquantized is not in the table). */
    public static final Map<Integer, Exl2Params> HEAD_OPTIONS = headOptions();

    /**
     * get_qparams_reduced: the distinct options of each projection (by desc, in first-seen order) and, per grid
     * row, the index of its option in each projection's list. With {@code ignoreFirst} (a MLP without gate) the
     * first projection's list stays empty and the row maps leave it out, as in qparams.py.
     */
    public record Reduced(List<List<Exl2Params>> perProjection, List<int[]> rows) {}

    public static Reduced reduced(List<List<Exl2Params>> grid, boolean ignoreFirst) {
        int dim = grid.getFirst().size();
        List<Map<String, Integer>> index = new ArrayList<>();
        List<List<Exl2Params>> distinct = new ArrayList<>();
        for (int i = 0; i < dim; i++) {
            index.add(new LinkedHashMap<>());
            distinct.add(new ArrayList<>());
        }
        List<int[]> rows = new ArrayList<>();
        for (List<Exl2Params> row : grid) {
            if (row.size() != dim) throw new IllegalArgumentException("grid rows differ in length");
            int[] map = new int[ignoreFirst ? dim - 1 : dim];
            for (int i = ignoreFirst ? 1 : 0; i < dim; i++) {
                Exl2Params p = row.get(i);
                List<Exl2Params> list = distinct.get(i);
                int j = index.get(i).computeIfAbsent(p.desc(), d -> {
                    list.add(p);
                    return list.size() - 1;
                });
                map[ignoreFirst ? i - 1 : i] = j;
            }
            rows.add(map);
        }
        List<List<Exl2Params>> frozen = new ArrayList<>();
        for (List<Exl2Params> l : distinct) frozen.add(List.copyOf(l));
        return new Reduced(List.copyOf(frozen), List.copyOf(rows));
    }

    // ---- helpers ------------------------------------------------------------------------------------------------

    /** Rows per kernel step for a bit width: 16 for 2-bit, else 32. */
    static int rowStep(int bits) {
        return bits == 2 ? 16 : 32;
    }

    private static List<Exl2Params> row(String... descs) {
        List<Exl2Params> r = new ArrayList<>();
        for (String d : descs) r.add(parse(d));
        return List.copyOf(r);
    }

    @SafeVarargs
    private static List<List<Exl2Params>> grid(List<Exl2Params>... rows) {
        return List.of(rows);
    }

    private static Map<Integer, Exl2Params> headOptions() {
        Map<Integer, Exl2Params> m = new LinkedHashMap<>();
        m.put(2, parse("0.3:4b_32g/0.7:2b_32g"));
        m.put(3, parse("0.15:4b_32g/0.85:3b_32g"));
        m.put(4, parse("0.15:6b_32g/0.85:4b_32g"));
        m.put(5, parse("0.15:6b_128g/0.85:5b_128g"));
        m.put(6, parse("0.15:8b_128g/0.85:6b_128g"));
        m.put(8, parse("1.0:8b_128g"));
        return java.util.Collections.unmodifiableMap(m);
    }

    private static String descOf(List<Segment> segments, int scaleBits) {
        StringBuilder sb = new StringBuilder();
        for (Segment s : segments) {
            if (!sb.isEmpty()) sb.append('/');
            sb.append(s.proportionText()).append(':').append(s.bits()).append("b_").append(s.groupSize()).append('g');
        }
        return sb.append(" s").append(scaleBits).toString();
    }

    private static List<Integer> bitsList(List<Segment> segments) {
        return segments.stream().map(Segment::bits).toList();
    }

    /** Python's repr of a JSON number: integers as written, floats with a fractional part ("1.0"). */
    private static String pythonRepr(Number n) {
        if (n instanceof Long || n instanceof Integer) return n.toString();
        String s = Double.toString(n.doubleValue());
        return s.contains("E") ? new BigDecimal(s).toPlainString() : s;
    }

    private static double parseProportion(String text) {
        try {
            return Double.parseDouble(text);
        } catch (NumberFormatException e) {
            throw new QtoolException("EXL2 bits proportion \"" + text + "\" is not a number");
        }
    }

    private static int parseInt(String text, String what, String desc) {
        try {
            return Integer.parseInt(text.strip());
        } catch (NumberFormatException e) {
            throw new QtoolException("EXL2 option \"" + desc + "\": " + what + " \"" + text + "\" is not an integer");
        }
    }

    private static Object require(Map<String, Object> dict, String key, String where) {
        Object v = dict.get(key);
        if (v == null) throw new QtoolException(where + ": missing \"" + key + "\"");
        return v;
    }

    private static int intValue(Object v, String what) {
        if (v instanceof Long l && l == l.intValue()) return l.intValue();
        if (v instanceof Integer i) return i;
        if (v instanceof Double d && d == Math.rint(d) && Math.abs(d) < 1e9) return d.intValue();
        throw new QtoolException(what + ": " + v + " is not an integer");
    }
}
