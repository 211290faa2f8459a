package qtool;

import java.io.PrintStream;

/**
 * A progress bar with rate and ETA on stderr, redrawn at most every 200 ms. On a terminal it redraws one line in
 * place; when stderr is not a terminal (logs, CI) it prints a line per 10% instead of flooding the log.
 */
public final class Progress implements AutoCloseable {
    private final String label;
    private final long total;
    private final String unit;
    private final PrintStream out;
    private final boolean tty = System.console() != null;
    private final long start = System.nanoTime();
    private long done;
    private long lastDraw;
    private int lastDecile = -1;

    public Progress(String label, long total, String unit) {
        this(label, total, unit, System.err);
    }

    public Progress(String label, long total, String unit, PrintStream out) {
        this.label = label;
        this.total = total;
        this.unit = unit;
        this.out = out;
    }

    public void step(long n) {
        done += n;
        long now = System.nanoTime();
        if (tty ? now - lastDraw > 200_000_000L || done >= total : (int) (10 * done / Math.max(1, total)) > lastDecile) {
            lastDraw = now;
            lastDecile = (int) (10 * done / Math.max(1, total));
            draw(now);
        }
    }

    private void draw(long now) {
        double secs = (now - start) / 1e9;
        double rate = done / Math.max(1e-9, secs);
        double eta = rate > 0 ? (total - done) / rate : 0;
        int width = 30, filled = (int) (width * done / Math.max(1, total));
        String bar = "#".repeat(filled) + "-".repeat(width - filled);
        String line = String.format("%s [%s] %d/%d %s, %.1f %s/s, %s elapsed, ETA %s", label, bar, done, total, unit, rate, unit,
                time(secs), time(eta));
        out.print(tty ? "\r" + line + "\u001b[K" : line + "\n");
        out.flush();
    }

    private static String time(double s) {
        long t = Math.round(s);
        return t >= 3600 ? String.format("%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String.format("%d:%02d", t / 60, t % 60);
    }

    @Override
    public void close() {
        if (tty) {
            out.println();
            out.flush();
        }
    }
}
