package qtool.cli;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.model.Forward;
import qtool.model.LlamaModel;

/**
 * {@code qtool logits}: the full logits of one sequence as raw little-endian float32 [tokens, vocab], for checking
 * the forward pass against other implementations (scripts/gpu/reference.py compares with transformers).
 */
@Command(name = "logits", hidden = true, mixinStandardHelpOptions = true, description = "Dump the logits of a token sequence (float32, row-major).")
public final class LogitsCommand implements Callable<Integer> {
    @Mixin ModelOption model;
    @Mixin DeviceOption device;
    @Option(names = "--ids", description = "Comma-separated token ids.") String ids;
    @Option(names = "--random", description = "Use N random token ids (seeded by --seed) instead of --ids.") int random;
    @Option(names = "--seed", defaultValue = "1") long seed;
    @Option(names = "--out", required = true) Path out;

    @Override
    public Integer call() throws IOException {
        try (LlamaModel m = model.open(); Backend b = device.open()) {
            int vocab = m.config.vocabSize();
            int[] tokens;
            if (random > 0) {
                SplittableRandom r = new SplittableRandom(seed);
                tokens = r.ints(random, 0, vocab).toArray();
            } else if (ids != null) {
                tokens = Arrays.stream(ids.split(",")).map(String::trim).mapToInt(Integer::parseInt).toArray();
            } else {
                throw new QtoolException("give --ids or --random");
            }
            try (Forward f = new Forward(m, b, model.linearType(b, m), 1, tokens.length, false, false, model.ropeAlpha, model.ropeScale);
                 FileChannel ch = FileChannel.open(out, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING, StandardOpenOption.WRITE)) {
                f.forward(tokens, 1, tokens.length, 0);
                for (int r = 0; r < tokens.length; r++) {
                    float[] row = f.logits(r);
                    ByteBuffer buf = ByteBuffer.allocate(row.length * 4).order(ByteOrder.LITTLE_ENDIAN);
                    MemorySegment.copy(row, 0, MemorySegment.ofBuffer(buf), ValueLayout.JAVA_FLOAT_UNALIGNED, 0, row.length);
                    while (buf.hasRemaining()) ch.write(buf);
                }
            }
            System.err.println("logits: " + tokens.length + " x " + vocab + " float32 -> " + out + "; ids " + Arrays.toString(tokens).replace(" ", ""));
            return 0;
        }
    }
}
