package qtool;

/**
 * An error the user can act on: bad input files, bad flags, a missing library. The CLI prints its message as one
 * line and exits with code 2; the message names the file (or flag) and the problem.
 */
public class QtoolException extends RuntimeException {
    public QtoolException(String message) {
        super(message);
    }

    public QtoolException(String message, Throwable cause) {
        super(message, cause);
    }
}
