package qtool.model;

import java.nio.file.Path;
import java.util.Random;
import qtool.backend.Backend;
import qtool.backend.Backends;
import qtool.load.DType;

/**
 * Per-pass wall times of the ppl loop (forward of batch × ctx tokens, then the NLL of every row, as
 * {@link qtool.evaluate.Perplexity} runs it) on random token ids: shows the first pass's one-time costs apart from the
 * steady state. A measuring tool for the GPU host, not a test:
 * {@code java -cp qtool.jar:checks qtool.model.PrefillTiming MODEL BATCH CTX PASSES [f16|bf16|f32]}.
 */
public final class PrefillTiming {
    public static void main(String[] args) {
        Path dir = Path.of(args[0]);
        int batch = Integer.parseInt(args[1]), ctx = Integer.parseInt(args[2]), passes = Integer.parseInt(args[3]);
        DType type = args.length > 4 ? DType.valueOf(args[4].toUpperCase(java.util.Locale.ROOT)) : DType.F16;
        long t0 = System.nanoTime();
        try (LlamaModel m = LlamaModel.open(dir); Backend b = Backends.open("cuda", System.out)) {
            long t1 = System.nanoTime();
            try (Forward f = new Forward(m, b, type, batch, ctx, false, false, 1.0, 1.0)) {
                long t2 = System.nanoTime();
                System.out.printf("open backend %.0f ms, upload weights + allocate %.0f ms, activations %s%n", (t1 - t0) / 1e6,
                        (t2 - t1) / 1e6, f.activationType());
                Random r = new Random(1);
                int vocab = m.config.vocabSize();
                double sum = 0;
                double[] ms = new double[passes];
                for (int p = 0; p < passes; p++) {
                    int[] tokens = new int[batch * ctx], targets = new int[batch * ctx];
                    for (int i = 0; i < tokens.length; i++) tokens[i] = r.nextInt(vocab);
                    for (int i = 0; i < tokens.length; i++) targets[i] = (i + 1) % ctx == 0 ? -1 : tokens[i + 1];
                    long s = System.nanoTime();
                    f.forward(tokens, batch, ctx, 0);
                    float[] nll = f.nll(targets);
                    ms[p] = (System.nanoTime() - s) / 1e6;
                    if (p > 0) sum += ms[p];
                    if (!Float.isFinite(nll[0])) System.out.println("non-finite NLL in pass " + p);
                }
                StringBuilder line = new StringBuilder("pass ms:");
                for (double x : ms) line.append(String.format(" %.1f", x));
                System.out.println(line);
                if (passes > 1) {
                    double steady = sum / (passes - 1);
                    System.out.printf("%dx%d: first pass %.1f ms (%.1f ms above the rest), then %.1f ms a pass = %.0f tok/s%n",
                            batch, ctx, ms[0], ms[0] - steady, steady, batch * ctx / (steady / 1e3));
                }
            }
        }
    }
}
