from rankloop.cli import main

main()
