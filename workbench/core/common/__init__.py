"""What every capability shares: errors, jobs and their cancel token, files written atomically, the app's folders, threads, the user's data files."""
