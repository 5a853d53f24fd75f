"""The chaos suite: workers, brokers and result backends fail while tasks run; nothing is lost."""
