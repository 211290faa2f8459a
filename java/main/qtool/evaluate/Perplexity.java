package qtool.evaluate;

import java.util.Arrays;
import qtool.Progress;
import qtool.model.Forward;

/**
 * Perplexity under the GPTQ paper's protocol: the token stream cut into non-overlapping windows of {@code ctx}
 * tokens (the incomplete tail dropped); within a window every token but the first is predicted from the ones before;
 * ppl = exp(total NLL / predicted tokens). Windows are run {@code batch} at a time.
 */
public final class Perplexity {
    private Perplexity() {}

    /** nllSums[w] is window w's summed NLL over its ctx − 1 predicted tokens. */
    public record Result(int ctx, int windows, long predicted, double nll, double ppl, double seconds, double[] nllSums) {
        public double tokensPerSecond() {
            return (double) windows * ctx / seconds;
        }
    }

    public static int windowCount(int tokens, int ctx) {
        return tokens / ctx;
    }

    /**
     * Perplexity under llama-perplexity's protocol ({@code tools/perplexity/perplexity.cpp}, the default, non-KL
     * path): the text tokenized once (with BOS when the vocabulary adds it), cut into {@code ctx}-token chunks (the
     * tail dropped); in each chunk the first token is replaced by BOS when {@code bos} ≥ 0, and only the second half is
     * scored: positions {@code ctx/2 .. ctx−2} predict the next token, {@code ctx − 1 − ctx/2} per chunk. The first
     * half is context only, so each scored token sees at least ctx/2 tokens before it.
     *
     * @param bos the BOS id to put first in every chunk (the vocabulary adds BOS), or −1
     */
    public static Result evaluateLlamaCpp(Forward forward, int[] ids, int ctx, int maxWindows, int batch, int bos) {
        return evaluate(forward, ids, ctx, maxWindows, batch, ctx / 2, bos);
    }

    /** Evaluates the first {@code maxWindows} windows (all when ≤ 0). {@code forward} must hold batch × ctx rows. */
    public static Result evaluate(Forward forward, int[] ids, int ctx, int maxWindows, int batch) {
        return evaluate(forward, ids, ctx, maxWindows, batch, 0, -1);
    }

    /**
     * Both protocols: positions {@code first .. ctx−2} of each window predict the next token; with {@code bos} ≥ 0
     * the first token of every window is replaced by BOS.
     */
    private static Result evaluate(Forward forward, int[] ids, int ctx, int maxWindows, int batch, int first, int bos) {
        int windows = windowCount(ids.length, ctx);
        if (maxWindows > 0) windows = Math.min(windows, maxWindows);
        if (windows == 0) throw new qtool.QtoolException("the text has " + ids.length + " tokens, fewer than one window of " + ctx);
        double[] sums = new double[windows];
        long t0 = System.nanoTime();
        try (Progress bar = new Progress("ppl", (long) windows * ctx, "tok")) {
            for (int w0 = 0; w0 < windows; w0 += batch) {
                int nb = Math.min(batch, windows - w0);
                int[] tokens = Arrays.copyOfRange(ids, w0 * ctx, (w0 + nb) * ctx);
                int[] targets = new int[tokens.length];
                for (int i = 0; i < tokens.length; i++) {
                    int pos = i % ctx;
                    targets[i] = pos >= first && pos < ctx - 1 ? tokens[i + 1] : -1; // the original next token
                }
                if (bos >= 0) for (int k = 0; k < nb; k++) tokens[k * ctx] = bos;
                forward.forward(tokens, nb, ctx, 0);
                float[] nll = forward.nll(targets);
                for (int i = 0; i < nll.length; i++) sums[w0 + i / ctx] += nll[i];
                bar.step((long) nb * ctx);
            }
        }
        double seconds = (System.nanoTime() - t0) / 1e9;
        double total = 0;
        for (double s : sums) total += s;
        long predicted = (long) windows * (ctx - 1 - first);
        return new Result(ctx, windows, predicted, total / predicted, Math.exp(total / predicted), seconds, sums);
    }
}
