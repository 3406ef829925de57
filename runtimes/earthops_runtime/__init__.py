"""earthops data plane: code that runs in Ray and KServe pods and in embedded mode."""
