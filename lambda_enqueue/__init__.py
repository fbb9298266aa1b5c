"""AWS Lambda enqueue entry point; the function's handler is ``lambda_enqueue.handler.handler``."""
