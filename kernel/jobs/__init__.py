"""Background jobs on arq: the worker and the jobs the kernel runs."""
