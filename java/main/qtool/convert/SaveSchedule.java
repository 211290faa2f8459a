package qtool.convert;

/**
 * When a layer-by-layer job saves its residual stream (the state a resume starts from): after the last step, and
 * otherwise once the time since the previous save is {@value #RATIO}× what that save took. Saving then costs at most
 * about 1/{@value #RATIO} of the run, whatever the stream's size (a 100 × 2048-token stream of a small model is
 * ~0.5 GB, written and fsynced in a second or so, while its layers take a fraction of that); the first step always
 * saves, which measures the cost. A resume redoes at most the steps since the last save, with the same result.
 */
public final class SaveSchedule {
    static final int RATIO = 20;
    private long lastEnd = System.nanoTime(), lastCost;

    /** Whether to save now; {@code last}: the job's final step. */
    public boolean due(boolean last) {
        return last || System.nanoTime() - lastEnd > RATIO * lastCost;
    }

    /** Records a save that began at {@code startNanos} and has just ended. */
    public void saved(long startNanos) {
        long now = System.nanoTime();
        lastCost = now - startNanos;
        lastEnd = now;
    }
}
