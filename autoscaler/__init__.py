"""The autoscaler: GPU workers follow the queue, from zero, and never outlive their purpose."""
